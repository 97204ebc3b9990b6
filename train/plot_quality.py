#!/usr/bin/python3
"""Plots held-out loss against active parameters for every spec of a model's
quality.json (gnuplot, from Debian's gnuplot-nox) into quality.png beside it."""
import argparse
import json
import os
import subprocess
import tempfile


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir", default="models/default")
    args = parser.parse_args()
    with open(os.path.join(args.model_dir, "quality.json")) as f:
        specs = json.load(f)["specs"]
    groups = {"granularity": [], "non-decreasing": [], "decreasing": [], "skipped layer": []}
    for s in specs:
        if "-" not in s["name"]:
            groups["granularity"].append(s)
        elif s.get("skipped_layers"):
            groups["skipped layer"].append(s)
        elif s.get("non_decreasing"):
            groups["non-decreasing"].append(s)
        else:
            groups["decreasing"].append(s)
    out = os.path.join(args.model_dir, "quality.png")
    with tempfile.TemporaryDirectory() as tmp:
        plots = []
        styles = {"granularity": "pt 7 ps 1.6 lc rgb '#d62728'", "non-decreasing": "pt 6 ps 0.8 lc rgb '#1f77b4'",
                  "decreasing": "pt 4 ps 0.8 lc rgb '#ff7f0e'", "skipped layer": "pt 8 ps 1.0 lc rgb '#2ca02c'"}
        for name, members in groups.items():
            if not members:
                continue
            path = os.path.join(tmp, name.replace(" ", "_") + ".dat")
            with open(path, "w") as f:
                for s in sorted(members, key=lambda s: s["active_params"]):
                    f.write(f"{s['active_params'] / 1e6} {s['loss']} {s['name']}\n")
            plots.append(f"'{path}' using 1:2 with points {styles[name]} title '{name}'")
            if name == "granularity":
                plots.append(f"'{path}' using 1:2:3 with labels offset 0,1 notitle")
                plots.append(f"'{path}' using 1:2 with lines lc rgb '#d62728' notitle")
        script = (f"set terminal pngcairo size 1000,650\nset output '{out}'\n"
                  "set xlabel 'active parameters (M)'\nset ylabel 'held-out loss (nats/token)'\n"
                  "set title 'Mix-n-Match submodels of models/default (matformer-eval, C++ engine)'\n"
                  "set key top right\nset grid\nplot " + ", ".join(plots) + "\n")
        subprocess.run(["gnuplot"], input=script.encode(), check=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
