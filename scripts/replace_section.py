#!/usr/bin/env python3
"""Writes one section of a markdown file that several benchmarks share.

    replace_section.py FILE NAME < SECTION

The text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in FILE is
replaced by SECTION (the markers are kept); without those markers the
section is appended. Other sections are left as they are. A missing FILE
starts with the title `# netaccel benchmarks`.
"""
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    path, name = sys.argv[1], sys.argv[2]
    begin_marker, end_marker = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin_marker}\n{sys.stdin.read().strip()}\n{end_marker}\n"
    try:
        with open(path) as file:
            text = file.read()
    except FileNotFoundError:
        text = "# netaccel benchmarks\n"
    begin, end = text.find(begin_marker), text.find(end_marker)
    if begin != -1 and end > begin:
        rest = text[end + len(end_marker):].lstrip("\n")
        text = text[:begin] + section + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as file:
        file.write(text)


if __name__ == "__main__":
    main()
