#!/usr/bin/env python3
"""Per-test outcomes of a regrtest run, from its --junit-xml file.

  outcomes.py list RUN.xml               "test id<TAB>outcome" lines, sorted
  outcomes.py differ KERNEL.tsv NETACCEL.tsv
                                         the ids whose outcome differs
                                         ("id<TAB>kernel<TAB>netaccel")
  outcomes.py count RUN.tsv              "passed N failed N error N skipped N"

Outcomes are passed, failed, error, skipped; a test missing from one side
(its worker died, say) is "missing" there.
"""
import collections
import sys
import xml.etree.ElementTree as ElementTree

OUTCOMES = ("passed", "failed", "error", "skipped")


def outcome_of(testcase):
    for child, outcome in (("error", "error"), ("failure", "failed"), ("skipped", "skipped")):
        if testcase.find(child) is not None:
            return outcome
    return "passed"


def list_outcomes(xml_path):
    try:
        root = ElementTree.parse(xml_path).getroot()
    except (OSError, ElementTree.ParseError) as error:
        sys.exit(f"cannot read {xml_path}: {error}")
    outcomes = {}
    for testcase in root.iter("testcase"):
        outcomes[testcase.get("name")] = outcome_of(testcase)
    for test_id in sorted(outcomes):
        print(f"{test_id}\t{outcomes[test_id]}")


def read_table(path):
    with open(path, encoding="utf-8") as table:
        return dict(line.rstrip("\n").split("\t") for line in table if line.strip())


def differ(kernel_path, netaccel_path):
    kernel, netaccel = read_table(kernel_path), read_table(netaccel_path)
    for test_id in sorted(kernel.keys() | netaccel.keys()):
        on_kernel = kernel.get(test_id, "missing")
        on_netaccel = netaccel.get(test_id, "missing")
        if on_kernel != on_netaccel:
            print(f"{test_id}\t{on_kernel}\t{on_netaccel}")


def count(path):
    counts = collections.Counter(read_table(path).values())
    print(" ".join(f"{outcome} {counts[outcome]}" for outcome in OUTCOMES))


def main():
    commands = {"list": (list_outcomes, 1), "differ": (differ, 2), "count": (count, 1)}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    function, arity = commands[sys.argv[1]]
    if len(sys.argv) != arity + 2:
        sys.exit(__doc__)
    function(*sys.argv[2:])


if __name__ == "__main__":
    main()
