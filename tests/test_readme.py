"""The README's first screen tells a newcomer what this is, the two commands and where the results appear, then the answer,
read from the published run (`nbs/images/results.json`); its project notes say which docs to build."""
import json, re
from conftest import ROOT

README = (ROOT/'README.md').read_text(encoding='utf-8')
LINES = README.splitlines()


def test_first_screen_is_summary_commands_and_where_results_appear():
    first = '\n'.join(LINES[:40])
    assert re.search(r'^A notebook study that reproduces and extends \*Size Matters', first, re.M), first
    for what in ('bash scripts/study.sh', 'bash scripts/test.sh', 'runs/default/', 'report/html/index.html'):
        assert what in first, what
    heads = [l for l in LINES if l.startswith('## ')]
    assert heads[:2] == ['## Quick start', '## The answer, from the latest published run'], heads   # the answer follows
    assert LINES.index('## The answer, from the latest published run') < 40


def test_answer_is_the_published_run():
    res = json.loads((ROOT/'nbs'/'images'/'results.json').read_text(encoding='utf-8'))
    s = res['summary']
    for f in s['fractions']:
        q = s['per_fraction'][f]
        assert f"| {float(f):.0%} | {q['replicates']} | {q['best_cer']:.3f} |" in README, f
    assert f"Noise ceiling ({s['noise_ceiling']['replicates']} replicate searches" in README
    for fig in res['figures']:
        assert f'](nbs/images/{fig})' in README, fig
        assert (ROOT/'nbs'/'images'/fig).is_file(), fig


def test_project_notes_say_which_docs_to_use():
    notes = README[README.index('## Project notes'):]
    assert 'asr-kd docs' in notes and 'nbdev-docs' in notes and 'Quarto' in notes, notes
