"""BENCHMARKS.md: the list of sections under the summary matches the headings and their links."""

import re

from tests.conftest import REPO


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped (hyphens and
    underscores kept), each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_sections_list_names_every_heading_after_it_with_its_anchor():
    text = (REPO / "BENCHMARKS.md").read_text()
    listed_part = text.split("\nSections:\n", 1)[1]
    listed = re.findall(r"^( *)- \[(.+)\]\(#(.+)\)$", listed_part.split("\n\n#", 1)[0].strip("\n"), flags=re.M)
    body = listed_part.split("\n\n#", 1)[1]
    lines, in_code = [], False
    for line in ("#" + body).split("\n"):
        in_code ^= line.startswith("```")
        if not in_code and re.match(r"#{2,3} ", line):
            lines.append(line)
    headings = [(len(line.split(" ", 1)[0]), line.split(" ", 1)[1]) for line in lines]
    assert [(2 + len(indent) // 2, title) for indent, title, _ in listed] == headings
    for _, title, anchor in listed:
        assert anchor == github_anchor(title), title
