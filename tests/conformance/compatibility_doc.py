#!/usr/bin/env python3
"""Writes the generated sections of docs/compatibility.md from test results.

  compatibility_doc.py [--conformance RESULTS.tsv] [--python RESULTS_DIR] DOC.md

--conformance: the file tests/conformance/run.sh writes (area, name,
verdict, detail, description). --python: the directory tests/python_suites/
run.sh writes MODULE.summary and MODULE.differences into. Each replaces the
text between its markers in DOC.md (<!-- conformance:begin/end -->,
<!-- python:begin/end -->); the rest of the page is left as written.
"""
import argparse
import collections
import pathlib
import re
import sys

PYTHON_SUITES = pathlib.Path(__file__).resolve().parent.parent / "python_suites"


def conformance_section(results_path):
    rows = [line.rstrip("\n").split("\t") for line in open(results_path, encoding="utf-8")]
    by_area = collections.OrderedDict()
    for area, name, verdict, detail, description in rows:
        by_area.setdefault(area, []).append((name, verdict, detail, description))
    total = collections.Counter(row[2] for row in rows)
    out = [
        f"{len(rows)} cases: {total['pass']} pass, {total['known-gap']} known gaps"
        + (f", {total['FAIL']} failing" if total["FAIL"] else "")
        + ".",
        "",
        "| area | cases | pass | known gap |",
        "| --- | ---: | ---: | ---: |",
    ]
    for area, cases in by_area.items():
        verdicts = collections.Counter(case[1] for case in cases)
        out.append(f"| {area} | {len(cases)} | {verdicts['pass']} | {verdicts['known-gap']} |")
    out += ["", "### Known gaps", ""]
    for area, cases in by_area.items():
        gaps = [case for case in cases if case[1] != "pass"]
        if not gaps:
            continue
        out.append(f"**{area}**")
        out.append("")
        for name, verdict, detail, _ in gaps:
            out.append(f"- `{name}`{'' if verdict == 'known-gap' else ' (' + verdict + ')'}: {detail}")
        out.append("")
    if all(case[1] == "pass" for cases in by_area.values() for case in cases):
        out += ["None: every case behaves under netaccel as on the kernel.", ""]
    out += ["### Every case", "", "| area | case | result | what it checks |", "| --- | --- | --- | --- |"]
    for area, cases in by_area.items():
        for name, verdict, _, description in cases:
            out.append(f"| {area} | `{name}` | {verdict} | {description} |")
    return "\n".join(out)


def python_section(results_dir):
    reasons = {}
    for line in open(PYTHON_SUITES / "known_gaps.txt", encoding="utf-8"):
        if line.startswith("#") or not line.strip():
            continue
        module, test_id, reason = line.rstrip("\n").split("\t", 2)
        reasons[(module, test_id)] = reason
    directory = pathlib.Path(results_dir)
    out = [
        "| module | result | kernel | netaccel | differing | netaccel connections | seconds (kernel / netaccel) |",
        "| --- | --- | --- | --- | ---: | ---: | --- |",
    ]
    differences = []
    for summary in sorted(directory.glob("*.summary")):
        module, verdict, kernel, netaccel, differing, carried, kernel_s, netaccel_s = (
            summary.read_text(encoding="utf-8").rstrip("\n").split("\t"))
        out.append(f"| {module} | {verdict} | {kernel} | {netaccel} | {differing} | {carried} "
                   f"| {kernel_s} / {netaccel_s} |")
        difference_file = directory / f"{module}.differences"
        if difference_file.exists():
            for line in difference_file.read_text(encoding="utf-8").splitlines():
                test_id, on_kernel, on_netaccel, status = line.split("\t")
                reason = reasons.get((module, test_id), "not yet explained")
                differences.append(f"- `{test_id}`: kernel {on_kernel}, netaccel {on_netaccel}"
                                   f"{'' if status == 'known-gap' else ' (' + status + ')'}: {reason}")
    out += ["", "Test cases whose outcome differs under netaccel (each a known gap):", ""]
    out += differences or ["- none"]
    return "\n".join(out)


def replace_section(text, name, body):
    pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        sys.exit(f"the page has no <!-- {name}:begin --> ... <!-- {name}:end --> markers")
    return pattern.sub(lambda match: match.group(1) + body + "\n" + match.group(2), text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conformance")
    parser.add_argument("--python")
    parser.add_argument("doc")
    arguments = parser.parse_args()
    page = pathlib.Path(arguments.doc)
    text = page.read_text(encoding="utf-8")
    if arguments.conformance:
        text = replace_section(text, "conformance", conformance_section(arguments.conformance))
    if arguments.python:
        text = replace_section(text, "python", python_section(arguments.python))
    page.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
