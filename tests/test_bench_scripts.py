"""The benchmark's helper scripts work: bench/svgplot.py writes SVG that parses, bench/loadproc.py
keeps its rate and counts its replies, and a few seconds of bench/soak.py end with 0 errors and
write their CSV and plot (about 15 s in all)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402
import svgplot  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def series_names(root: ET.Element) -> list[str]:
    return [group.find(f"{SVG}title").text for group in root.iter(f"{SVG}g") if group.get("class") == "series"]


def test_svgplot_writes_a_parsable_chart_with_every_series(tmp_path):
    series = [
        svgplot.Series("p50 <via server>", [(1, 2.0), (2, 2.5), (4, 3.1), (64, 40.0)]),
        svgplot.Series("p99", [(1, 5.0), (2, 6.0), (4, 9.0), (64, 120.0)], dashed=True),
    ]
    for options in ({"xlog": True, "ylog": True}, {}):
        text = svgplot.line_chart(
            "latency & more",
            "concurrency",
            "ms",
            series,
            refs=[("1 GB", 100)],
            bands=[svgplot.Band("±10%", 3, 4)],
            **options,
        )
        path = tmp_path / "chart.svg"
        path.write_text(text)
        root = ET.parse(path).getroot()  # noqa: S314 - our own output
        assert root.tag == f"{SVG}svg"
        assert series_names(root) == ["p50 <via server>", "p99"]
        lines = [g.find(f"{SVG}polyline") for g in root.iter(f"{SVG}g") if g.get("class") == "series"]
        assert [len(line.get("points").split()) for line in lines] == [4, 4]
        for line in lines:  # every point inside the drawing
            for point in line.get("points").split():
                x, y = map(float, point.split(","))
                assert 0 <= x <= float(root.get("width")) and 0 <= y <= float(root.get("height"))
        texts = [t.text for t in root.iter(f"{SVG}text")]
        assert "latency & more" in texts and "1 GB" in texts and "±10%" in texts and "p99" in texts
        assert not any(el.tag.endswith(("style", "script", "image")) for el in root.iter())
    assert svgplot.nice_ticks(0, 233) == [0, 50, 100, 150, 200, 250]


def test_loadproc_sends_at_its_rate_and_checks_each_reply(tmp_path):
    fake = subprocess.Popen(
        [sys.executable, str(BENCH / "fastfake.py"), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(fake.stdout.readline().split()[1])
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
        good = tmp_path / "good.request"
        good.write_bytes(loadgen.build_request("127.0.0.1", port, "POST", "/v1/chat/completions", body))
        bad = tmp_path / "bad.request"  # the fake answers 404
        bad.write_bytes(loadgen.build_request("127.0.0.1", port, "POST", "/nowhere", body))
        for request, marker in ((good, "piece-"), (bad, "piece-"), (good, "not-in-the-reply")):
            out = tmp_path / "out.jsonl"
            command = [sys.executable, str(BENCH / "loadproc.py"), "--port", str(port), "--request-file", str(request)]
            command += ["--rate", "100", "--seconds", "1", "--marker", marker, "--out", str(out)]
            subprocess.run(command, check=True, timeout=30)
            lines = [json.loads(line) for line in out.read_text().splitlines()]
            *seconds, totals = lines
            assert totals["done"] and totals["sent"] == 100
            assert [s["t"] for s in seconds][:1] == [1] and sum(s["sent"] for s in seconds) == 100
            if request == good and marker == "piece-":
                assert totals["ok"] == 100 and totals["errors"] == {} and seconds[0]["p50"] > 0 < seconds[0]["p99"]
            else:
                assert totals["ok"] == 0
                assert totals["errors"] == ({"status 404": 100} if request == bad else {"incomplete": 100})
    finally:
        fake.kill()
        fake.wait()


def test_a_short_soak_has_no_errors_and_writes_its_csv_and_plot(tmp_path):
    svg, table = tmp_path / "rss.svg", tmp_path / "rss.csv"
    command = [sys.executable, str(BENCH / "soak.py"), "--minutes", "0.15", "--sample-seconds", "2"]
    command += ["--warmup-minutes", "0", "--rate", "20", "--out", str(svg), "--csv", str(table)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "errors 0" in done.stdout and "PASS" in done.stdout, done.stdout
    sent = int(done.stdout.split("requests: sent ")[1].split(",")[0])
    assert 160 <= sent <= 200  # 20 req/s for 9 s
    rows = list(csv.DictReader(table.open()))
    assert len(rows) >= 5  # at 0, 2, 4, 6, 8 and 9 s
    assert all(float(row["total_mib"]) > float(row["worker1_mib"]) > 10 for row in rows)
    assert int(rows[-1]["ok"]) > 0 and all(row["errors"] == "0" for row in rows)
    root = ET.parse(svg).getroot()  # noqa: S314 - our own output
    assert series_names(root)[:4] == ["total (master + workers)", "master", "worker 1", "worker 2"]
