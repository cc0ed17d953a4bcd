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
    from asr_kd_nb.report import VERDICT_SHORT
    res = json.loads((ROOT/'nbs'/'images'/'results.json').read_text(encoding='utf-8'))
    s = res['summary']
    if 'design' not in s:                                                      # a run of the older design: said, and none of its numbers shown
        answer = README[README.index('## The answer'):README.index('## What the two commands do')]
        assert 'No run of the current design' in answer and 'predates it' in answer and '](nbs/images/' not in answer, answer
        return
    for f in s['fractions']:                                                   # each fraction's verdict at the primary cell, with its interval
        q = s['per_fraction'][f]
        assert f"| {float(f) * 100:.0f} % | **{VERDICT_SHORT[q['verdict']]}** | {q['diff']:+.4f} [{q['diff_ci'][0]:+.4f}, {q['diff_ci'][1]:+.4f}] |" in README, f
    c = s['calibration']                                                       # the design's error rates, measured
    assert f"| {c['coverage']:.1%} (target ≥ 92 %) | {c['false_worse']:.1%} (≤ 5 %) | {c['false_within']:.1%} (≤ 5 %) |" in README
    assert f"margin δ = {s['margin']:.4f} CER" in README and res['command'] in README and res['machine'] in README
    assert s['conclusion'].splitlines()[0] in README
    for fig in res['figures']:
        assert f'](nbs/images/{fig})' in README, fig
        assert (ROOT/'nbs'/'images'/fig).is_file(), fig
    for name in res['data']: assert (ROOT/'nbs'/'images'/name).is_file(), name   # the table and its schema, for others' strategies


def test_project_notes_say_which_docs_to_use():
    notes = README[README.index('## Project notes'):]
    assert 'asr-kd docs' in notes and 'nbdev-docs' in notes and 'Quarto' in notes, notes
