"""The benches' JSON and its pictures (bench/harness.py, bench/plot.py):
what the performance page is drawn from. No timing is asserted."""
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / 'bench'
sys.path.insert(0, str(BENCH))
import harness  # noqa: E402
import plot  # noqa: E402


def test_results_record_the_machine_and_every_round_and_plot_draws_them(tmp_path):
    results = harness.Results('bench_minilm', 2, latency=True)
    results.add('twin', 'the twin', 'ms', [4.0, 5.0, 6.0], batch=1, length=32)
    results.add('onnxruntime', 'onnxruntime', 'ms', [], batch=1, length=32)  # it failed
    results.write(tmp_path / 'figures' / 'latency.json')
    data = json.loads((tmp_path / 'figures' / 'latency.json').read_text())
    assert data['machine']['threads'] == 2 and data['machine']['model']
    assert 'mxnet' in data['versions'] and data['date'] and data['command']
    twin, failed = data['rows']
    assert (twin['median'], twin['min'], twin['max'], twin['n']) == (5.0, 4.0, 6.0, 3)
    assert failed['failed'] is True
    plot.main([str(tmp_path / 'figures'), '--output', str(tmp_path / 'png')])
    png = (tmp_path / 'png' / 'latency.png').read_bytes()
    assert png.startswith(b'\x89PNG') and len(png) > 10_000


def test_plot_names_what_it_cannot_draw(tmp_path):
    (tmp_path / 'other.json').write_text('{"a": 1}')
    with pytest.raises(SystemExit, match=r"other.json: not a bench JSON \(needs 'bench'"):
        plot.main([str(tmp_path), '--output', str(tmp_path / 'png')])
    with pytest.raises(SystemExit, match='holds no .json'):
        plot.main([str(tmp_path / 'png'), '--output', str(tmp_path / 'png')])
