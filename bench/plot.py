"""Draw the figures a bench wrote with --json: one PNG per JSON file, bars
per contestant grouped by workload (training / inference / encoding at each
batch; latency at each length), the median with the range of the rounds
(latency: up to p99), the CPU, its ISA and the threads in the title.

    python bench/bench_step.py --batch-sizes 128 --json results/step.json
    python bench/bench_minilm.py --latency --lengths 32 128 --json results/latency.json
    python bench/plot.py results --output docs/figures
"""
import argparse
import json
import os
import sys

WORKLOAD_KEYS = ('kind', 'batch', 'length')  # what groups the bars, in this order
TITLES = {'bench_step': "d2l's BERT ({config}): training, inference, encoding",
          'bench_minilm': 'all-MiniLM-L6-v2 encoding'}


def load(path):
    """A bench's JSON, refused with the file named if it is not one."""
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise SystemExit(f'{path}: not a bench JSON ({exc})')
    if not isinstance(data, dict) or not {'bench', 'machine', 'rows'} <= set(data):
        raise SystemExit(f"{path}: not a bench JSON (needs 'bench', 'machine' and 'rows'; "
                         'write one with --json)')
    return data


def title(data):
    m, setting = data['machine'], data.get('setting', {})
    what = TITLES.get(data['bench'], data['bench']).format(config=setting.get('config'))
    if setting.get('latency'):
        what += ', one request'
    capped = ' '.join(f'{k}={v}' for k, v in m.get('env', {}).items()
                      if k.startswith(('MKL_ENABLE', 'ONEDNN_MAX')))
    return (f'{what}\n{m["model"]}: {" ".join(m["flags"])}\n'
            f'{"capped: " + capped + chr(10) if capped else ""}'
            f'{m["threads"]} threads, {data["date"][:10]}')


def draw(data, path):
    """One bar chart of `data`'s rows into `path`."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = [r for r in data['rows'] if not r.get('failed')]
    if not rows:
        raise SystemExit(f'{data["bench"]}: no figures to draw (every contestant failed)')
    keys = [k for k in WORKLOAD_KEYS if any(k in r for r in rows)]
    groups = list(dict.fromkeys(tuple(r.get(k) for k in keys) for r in rows))
    contestants = list(dict.fromkeys(r['contestant'] for r in rows))
    unit = rows[0]['unit']
    width = 0.8 / len(contestants)
    fig, ax = plt.subplots(figsize=(max(7.5, 1.8 * len(groups) + 3.5), 4.6))
    for i, name in enumerate(contestants):
        xs, heights, low, high = [], [], [], []
        for g, group in enumerate(groups):
            row = next((r for r in rows if r['contestant'] == name
                        and tuple(r.get(k) for k in keys) == group), None)
            if row is None:
                continue
            top = row['p99'] if unit == 'ms' else row['max']
            xs.append(g + (i - (len(contestants) - 1) / 2) * width)
            heights.append(row['median'])
            low.append(row['median'] - row['min'])
            high.append(top - row['median'])
        ax.bar(xs, heights, width, yerr=[low, high], capsize=2, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([', '.join(f'{k} {v}' for k, v in zip(keys, g)) for g in groups])
    ax.set_ylabel(f'{unit} ({"median, min to p99" if unit == "ms" else "median, min to max"})')
    ax.set_title(title(data), fontsize=9)
    ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))  # never over a bar
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('folder', help='a folder of JSON files written by the benches with --json')
    parser.add_argument('--output', required=True, help='folder for the PNG files')
    args = parser.parse_args(argv)
    if not os.path.isdir(args.folder):
        raise SystemExit(f'folder: {args.folder!r} is not a folder')
    paths = sorted(os.path.join(args.folder, n) for n in os.listdir(args.folder)
                   if n.endswith('.json'))
    if not paths:
        raise SystemExit(f'folder: {args.folder!r} holds no .json (run a bench with --json)')
    os.makedirs(args.output, exist_ok=True)
    for path in paths:
        out = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + '.png')
        draw(load(path), out)
        print(out)


if __name__ == '__main__':
    sys.exit(main())
