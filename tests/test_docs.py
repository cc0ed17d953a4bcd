"""`asr-kd docs` builds the chapters into a static site that opens in a browser: an index page, one page per chapter (every
chapter of nbs/, in sidebar order), a sidebar linking them all, rendered API sections, and the inline tests' output.
Three pages are built with --api-only (no inline tests: the full build costs what nbdev-test costs, which the test command
runs already; each page costs a fresh Python process); one chapter is built in full to show the tests' output."""
import re, shutil, subprocess
from pathlib import Path
import nbformat, pytest
from conftest import ROOT, asr_kd

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
CHAPTERS = sorted(p.stem for p in (ROOT/'nbs').glob('*.ipynb'))


def _dom(page: Path) -> str:
    "The DOM of `page` after headless Chromium has loaded it (offline: the pages need no network)."
    r = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                        '--virtual-time-budget=5000', '--dump-dom', page.as_uri()], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and '</html>' in r.stdout, r.stderr[-2000:]
    return r.stdout


def README_ANSWER() -> str:
    readme = (ROOT/'README.md').read_text(encoding='utf-8')
    return readme[readme.index('## The answer'):readme.index('## What the two commands do')]


def _title(stem: str) -> str:
    nb = nbformat.read(ROOT/'nbs'/f'{stem}.ipynb', as_version=4)
    return next(m[1].strip() for c in nb.cells if c.cell_type == 'markdown' for m in [re.search(r'^#\s+(.+)$', c.source, re.M)] if m)


@pytest.mark.skipif(CHROMIUM is None, reason='Debian chromium is not installed')
def test_docs_site_opens_in_chromium(tmp_path):
    out = tmp_path/'site'
    pages = ['06_search', '06a_report', 'index']
    r = asr_kd('docs', '--out', out, '--api-only', '--chapters', *pages, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'open {out/"index.html"}' in r.stderr and 'failing cells' not in r.stderr, r.stderr[-1000:]
    assert sorted(p.stem for p in out.glob('*.html')) == pages              # the pages asked for, no more
    for stem in pages:
        text = (out/f'{stem}.html').read_text(encoding='utf-8')
        missing = [c for c in CHAPTERS if f'href="{c}.html"' not in text]
        assert not missing, (stem, missing)                                  # every page's sidebar links every chapter
        assert not re.search(r'<script[^>]*src="https?://', text), stem
    dom = _dom(out/'06_search.html')
    assert '<nav class="docs-nav"' in dom and '<a href="06_search.html" aria-current="page">' in dom
    assert f'>{_title("06_search")}' in dom                                  # the chapter's title, rendered
    assert 'id="search_worker"' in dom and 'show_doc' not in dom             # its API section, not the call
    home = _dom(out/'index.html')
    assert _title('index') in home
    answer = README_ANSWER()                                                 # the published answer, as on the README
    assert ('Error rates of this design' in home and '<table' in home) if 'Error rates of this design' in answer else 'No run of the current design' in home

    full = tmp_path/'full'
    r = asr_kd('docs', '--out', full, '--chapters', '06a_report', timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.name for p in full.glob('*.html')] == ['06a_report.html']
    outputs = lambda p: len(re.findall(r'<div class="jp-RenderedText', p.read_text(encoding='utf-8')))
    assert outputs(full/'06a_report.html') > outputs(out/'06a_report.html')   # the inline tests ran and show their output
