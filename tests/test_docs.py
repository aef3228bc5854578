"""The guides (docs/guide.md, docs/guide.fr.md) cannot drift from the CLI, nor from each other.

- every `rf-triton SUBCOMMAND... --option` they mention, in code blocks and inline code, names a
  real subcommand and one of its options (read from the click command typer builds, not from
  help text); a bare inline `--option` must belong to some rf-triton command;
- the command reference table of each guide lists exactly the options of every command;
- the French guide has the English one's heading structure and the same code blocks, comments aside;
- links between files and to headings resolve; the README links both guides.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest
import typer
from markdown_it import MarkdownIt

from rf_triton.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = {"en": DOCS / "guide.md", "fr": DOCS / "guide.fr.md"}

MARKDOWN = MarkdownIt("commonmark").enable("table")
RF_TRITON = re.compile(r"(?:\S*/)?rf-triton")
SHELL_TERMINATORS = {"|", "||", "&&", ";", "&", ">", ">>", "2>&1", "<"}
COMMENT = re.compile(r"(^|\s)#.*$")


# -- the CLI, as click sees it ---------------------------------------------------------------------


def command_tree():
    return typer.main.get_command(app)


def is_group(command) -> bool:
    return hasattr(command, "commands")


def options_of(command) -> set[str]:
    """Every spelling of every option of a command (--flag and --no-flag), and --help."""
    names = {"--help"}
    for param in command.params:
        if param.param_type_name == "option":
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def primary_options_of(command) -> set[str]:
    """One name per option (the first long one), --help left out: what the reference table lists."""
    return {next(o for o in param.opts if o.startswith("--")) for param in command.params
            if param.param_type_name == "option" and not getattr(param, "hidden", False)}


def leaf_commands(command=None, path=()) -> dict[tuple[str, ...], object]:
    command = command if command is not None else command_tree()
    if not is_group(command):
        return {path: command}
    leaves = {}
    for name, sub in command.commands.items():
        leaves.update(leaf_commands(sub, path + (name,)))
    return leaves


# -- what a Markdown file says ----------------------------------------------------------------------


@dataclass(frozen=True)
class Mention:
    tokens: tuple[str, ...]      # what follows `rf-triton` (or an implicit one: `models load ...`)
    where: str                   # "code" or "inline"
    text: str                    # the line or span, for messages


def split_markdown(text: str) -> tuple[list[tuple[str, str]], str]:
    """(fenced code blocks as (language, body)), and the prose with the blocks cut out (markdown-it's parse)."""
    fences = [t for t in MARKDOWN.parse(text) if t.type == "fence"]
    blocks = [(t.info.split()[0] if t.info.strip() else "", t.content) for t in fences]
    in_fence = {line for t in fences for line in range(*t.map)}
    prose = "\n".join(line for number, line in enumerate(text.splitlines()) if number not in in_fence)
    return blocks, prose


def inline_children(text: str):
    """Every token inside the paragraphs, headings and table cells of `text` (code blocks aside)."""
    for token in MARKDOWN.parse(text):
        if token.type == "inline":
            yield from token.children or ()


def code_spans(text: str) -> list[str]:
    return [t.content for t in inline_children(text) if t.type == "code_inline"]


def links(text: str) -> list[str]:
    """Link targets as written (markdown-it percent-encodes them: é in an anchor becomes %C3%A9)."""
    return [unquote(t.attrGet("href")) for t in inline_children(text) if t.type == "link_open"]


def strip_comment(line: str) -> str:
    return COMMENT.sub("", line).rstrip()


def code_lines(body: str) -> list[str]:
    """Logical lines of a code block: backslash continuations joined, comments removed."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line for line in (strip_comment(raw) for raw in joined.splitlines()) if line.strip()]


def clean(token: str) -> str:
    return token.strip("[](),\"'")


def mentions_in_tokens(tokens: list[str], where: str, text: str, top_level: set[str],
                       implicit: bool) -> list[Mention]:
    found = []
    for i, token in enumerate(tokens):
        if RF_TRITON.fullmatch(clean(token)):
            rest = []
            for t in tokens[i + 1:]:
                if t in SHELL_TERMINATORS or RF_TRITON.fullmatch(clean(t)):
                    break
                rest.append(clean(t))
            found.append(Mention(tuple(t for t in rest if t), where, text))
    if not found and implicit and tokens and tokens[0] in top_level:
        found.append(Mention(tuple(clean(t) for t in tokens if clean(t)), where, text))
    return found


def mentions(text: str, top_level: set[str]) -> tuple[list[Mention], list[str]]:
    """Every rf-triton command the text names, and every inline span that is a bare `--option`."""
    blocks, prose = split_markdown(text)
    found: list[Mention] = []
    for _language, body in blocks:
        for line in code_lines(body):
            found += mentions_in_tokens(line.split(), "code", line, top_level, implicit=False)
    bare = []
    for span in code_spans(text):
        tokens = span.split()
        if tokens and tokens[0].startswith("--"):
            bare.append(clean(tokens[0]).split("=")[0])
        found += mentions_in_tokens(tokens, "inline", span, top_level, implicit=True)
    return found, bare


def check_mention(mention: Mention, root) -> list[str]:
    """Problems with one mention: an unknown subcommand, or an option its command does not have."""
    command, path, tokens = root, [], list(mention.tokens)
    while is_group(command) and tokens and not tokens[0].startswith("-"):
        name = tokens.pop(0)
        if name not in command.commands:
            return [f"`rf-triton {' '.join(path + [name])}`: no such command (in {mention.where}: {mention.text!r})"]
        command, path = command.commands[name], path + [name]
    allowed = options_of(command)
    problems = []
    for token in tokens:
        if token.startswith("-") and len(token) > 1 and not re.fullmatch(r"-?\d[\d.]*", token):
            option = token.split("=")[0]
            if option not in allowed:
                problems.append(f"`rf-triton {' '.join(path)}` has no option {option} "
                                f"(in {mention.where}: {mention.text!r})")
    return problems


def reference_table(text: str) -> dict[tuple[str, ...], set[str]]:
    """Rows `| \\`rf-triton CMD [ARG]\\` | \\`--a\\` \\`--b\\` |` of the command reference table."""
    rows, cells = {}, None
    for token in MARKDOWN.parse(text):
        if token.type == "tr_open":
            cells = []
        elif token.type == "inline" and cells is not None:
            cells.append([c.content for c in token.children or () if c.type == "code_inline"])
        elif token.type == "tr_close":
            first = cells[0] if cells else []
            if len(cells) > 1 and len(first) == 1 and first[0].startswith("rf-triton "):
                path = tuple(word for word in first[0].split()[1:] if not word.isupper())
                rows[path] = {span.split()[0] for cell in cells[1:] for span in cell if span.startswith("--")}
            cells = None
    return rows


def headings(text: str) -> list[tuple[int, str]]:
    parsed = MARKDOWN.parse(text)
    return [(int(token.tag[1]), parsed[i + 1].content.strip())
            for i, token in enumerate(parsed) if token.type == "heading_open"]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = unicodedata.normalize("NFC", heading.replace("`", "").strip().lower())
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def normalised_blocks(text: str) -> list[tuple[str, list[str]]]:
    blocks, _prose = split_markdown(text)
    return [(language, code_lines(body)) for language, body in blocks]


# -- the checker itself must catch drift ------------------------------------------------------------


TOP_LEVEL = set(command_tree().commands)


def problems_in(text: str) -> list[str]:
    root = command_tree()
    found, bare = mentions(text, TOP_LEVEL)
    every_option = set().union(*(options_of(c) for c in leaf_commands().values()))
    problems = [p for mention in found for p in check_mention(mention, root)]
    problems += [f"inline `{option}` is not an option of any rf-triton command"
                 for option in bare if option not in every_option]
    return problems


def test_checker_catches_unknown_commands_and_options():
    sample = """
Run `rf-triton export --no-such-option` then `models load --versions 1`.

```bash
rf-triton serve --host 0.0.0.0 --bogus 3   # a comment with --not-checked
rf-triton models reload random_forest
.venv/bin/rf-triton tune \\
    --concurrency 8 --p99-budget-msec 5
docker compose up -d triton && rf-triton predict --values 1,2 | tee out.txt --tee-option
```

And a bare `--nowhere-option`, but `--control-key KEY` is fine.
"""
    problems = problems_in(sample)
    assert any("no option --no-such-option" in p for p in problems)
    assert any("no option --bogus" in p for p in problems)
    assert any("rf-triton models reload`: no such command" in p for p in problems)
    assert any("no option --p99-budget-msec" in p for p in problems)
    assert any("`--nowhere-option`" in p for p in problems)
    assert not any("--not-checked" in p or "--tee-option" in p or "--versions" in p or "--control-key" in p
                   for p in problems), problems
    assert len(problems) == 5, problems


def test_code_block_comparison_ignores_comments_only():
    english = "```bash\nrf-triton export   # the demo\n# a note\nrf-triton serve\n```\n"
    french = "```bash\nrf-triton export   # la démo\n# une note\nrf-triton serve\n```\n"
    changed = "```bash\nrf-triton export --seed 1   # la démo\nrf-triton serve\n```\n"
    assert normalised_blocks(english) == normalised_blocks(french)
    assert normalised_blocks(english) != normalised_blocks(changed)


# -- the guides ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guides() -> dict[str, str]:
    missing = [str(p) for p in GUIDES.values() if not p.is_file()]
    assert not missing, f"missing guide(s): {missing}"
    return {lang: path.read_text(encoding="utf-8") for lang, path in GUIDES.items()}


@pytest.mark.parametrize("lang", sorted(GUIDES))
def test_every_command_and_option_named_exists(guides, lang):
    found, bare = mentions(guides[lang], TOP_LEVEL)
    assert len([m for m in found if m.where == "code"]) >= 30, "too few commands found: is the parser broken?"
    assert len(bare) >= 50, "too few inline options found: is the parser broken?"
    assert problems_in(guides[lang]) == []


@pytest.mark.parametrize("lang", sorted(GUIDES))
def test_reference_table_lists_every_command_and_option(guides, lang):
    table = reference_table(guides[lang])
    leaves = leaf_commands()
    assert set(table) == set(leaves), "the command reference must have one row per command"
    for path, command in leaves.items():
        expected = primary_options_of(command)
        assert table[path] == expected, (f"rf-triton {' '.join(path)}: missing {sorted(expected - table[path])}, "
                                         f"unknown {sorted(table[path] - expected)}")


@pytest.mark.parametrize("lang", sorted(GUIDES))
def test_every_command_is_shown_in_a_code_block(guides, lang):
    found, _bare = mentions(guides[lang], TOP_LEVEL)
    shown = set()
    for mention in found:
        if mention.where == "code":
            shown.add(tuple(t for t in mention.tokens if not t.startswith("-"))[:2])
    for path in leaf_commands():
        assert any(s[:len(path)] == path for s in shown), f"no example of rf-triton {' '.join(path)}"


@pytest.mark.parametrize("option", ["--max-queue-size", "--queue-timeout-us", "--allow-timeout-override",
                                    "--priority-levels", "--serve-versions", "--format", "--tolerance"])
def test_export_options_the_issue_asks_for_are_explained(guides, option):
    for lang, text in guides.items():
        _blocks, prose = split_markdown(text)
        assert prose.count(f"`{option}") >= 2, f"{lang}: {option} is named but not explained outside the table"


def test_french_guide_has_the_same_structure(guides):
    english, french = headings(guides["en"]), headings(guides["fr"])
    assert [level for level, _ in english] == [level for level, _ in french]
    assert sum(level == 2 for level, _ in english) >= 10 and sum(level == 3 for level, _ in english) >= 20
    numbered = [(re.match(r"\d+\.", t) or [None])[0] for level, t in english if level == 2]
    assert numbered == [(re.match(r"\d+\.", t) or [None])[0] for level, t in french if level == 2]
    assert [t for _, t in english] != [t for _, t in french], "the French headings are not translated"


def test_french_guide_has_the_same_code_blocks(guides):
    english, french = normalised_blocks(guides["en"]), normalised_blocks(guides["fr"])
    assert len(english) == len(french) >= 25
    for i, (en, fr) in enumerate(zip(english, french)):
        assert en == fr, f"code block {i + 1} differs (comments aside):\n{en}\n---\n{fr}"


def test_french_guide_is_a_translation_not_a_summary(guides):
    english_prose, french_prose = (split_markdown(guides[lang])[1] for lang in ("en", "fr"))
    ratio = len(french_prose.split()) / len(english_prose.split())
    assert 0.9 <= ratio <= 1.5, f"French prose has {ratio:.2f}× the English word count"
    for word in (" the ", " and ", " with "):
        assert french_prose.count(word) < 10, f"untranslated English in the French guide ({word.strip()!r})"


@pytest.mark.parametrize("lang", sorted(GUIDES))
def test_links_resolve(guides, lang):
    text = guides[lang]
    anchors = {slug(title) for _, title in headings(text)}
    _blocks, prose = split_markdown(text)
    for target in links(text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        if path:
            assert (GUIDES[lang].parent / path).exists(), f"broken link {target}"
        elif anchor:
            assert anchor in anchors, f"no heading for #{anchor} (have {sorted(anchors)})"
    other = "guide.fr.md" if lang == "en" else "guide.md"
    assert f"]({other})" in prose, "each guide links the other language"


def test_readme_links_both_guides():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = links(readme)
    for guide in GUIDES.values():
        relative = guide.relative_to(ROOT).as_posix()
        assert relative in targets, f"README.md does not link {relative}"
        assert guide.is_file()
