"""The README and docs/ stay true to the tree: every relative link resolves (file and #anchor), every docs page is
reachable from the README, docs/ARCHITECTURE.md names every module of diffusion/ and ui/ and nothing that does not
exist, the README's tab table lists every tab, and docs/make_screenshots.py has a shot for every tab."""
from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
ARCHITECTURE = DOCS / "ARCHITECTURE.md"
README_MAX_LINES = 150

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)      # fenced code blocks
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)                       # inline code
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_REF = re.compile(r"""<(?:img|a)\b[^>]*?\b(?:src|href)=["']([^"']+)["']""", re.I)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
EXPLICIT_ANCHOR = re.compile(r"""<a\s+(?:name|id)=["']([^"']+)["']""", re.I)
MODULE_PATH = re.compile(r"\b((?:diffusion|ui|train|bench|tests)/[\w/]*\w\.(?:py|sh|md|css))\b")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> str:
    """The text with code blocks and inline code removed: a link shown as code is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def relative_links(text: str) -> list[str]:
    """Every link and image target that is not a URL (http:, mailto:, ...)."""
    targets = LINK.findall(prose(text)) + HTML_REF.findall(prose(text))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)          # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The #anchors a Markdown file defines: its headings' slugs (repeats numbered -1, -2, ...) and <a id=...>."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set(EXPLICIT_ANCHOR.findall(text))
    for _, heading in HEADING.findall(text):
        base = slug(heading)
        found.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return found


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            problems.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor} in {file.name})")
    return problems


# ------------------------------------------------------------------ the link checker itself


def test_the_link_checker_reads_markdown_as_github_does(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Quality v2: two evaluators\n\n## The recipe, A/B at `equal` compute\n\n## Notes\n\n## Notes\n"
                    "[ok](other.md#section-one) [self](#quality-v2-two-evaluators) ![img](pic.png)\n"
                    "[dup](#notes-1) [web](https://example.com/x.md) `[code](nowhere.md)`\n"
                    "```\n[fenced](nowhere.md)\n```\n"
                    "[gone](missing.md) [bad anchor](other.md#section-two) [`code text`](#the-recipe-ab-at-equal-compute)\n",
                    encoding="utf-8")
    (tmp_path / "other.md").write_text("## Section one\n", encoding="utf-8")
    (tmp_path / "pic.png").write_bytes(b"")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert broken_links(page) == ["page.md: missing.md (no such file)",
                                      "page.md: other.md#section-two (no heading #section-two in other.md)"]
    finally:
        ROOT = saved
    assert slug("pixel-uncond v3, and autoguidance") == "pixel-uncond-v3-and-autoguidance"
    assert slug("The [README](x.md)'s *models*") == "the-readmes-models"


# ------------------------------------------------------------------ the pages


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_every_docs_page_is_reachable_from_the_readme():
    reached, todo = {README.resolve()}, [README]
    while todo:
        page = todo.pop()
        for target in relative_links(page.read_text(encoding="utf-8")):
            file = (page.parent / target.partition("#")[0]).resolve()
            if file.suffix == ".md" and file.is_file() and file not in reached:
                reached.add(file)
                todo.append(file)
    unlinked = [p.name for p in DOCS.glob("*.md") if p.resolve() not in reached]
    assert unlinked == [], f"docs pages no link leads to from README.md: {unlinked}"


def test_the_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES, f"README.md has {len(text.splitlines())} lines"
    assert "![" in text and "docs/screenshot.png" in text


# ------------------------------------------------------------------ the tabs


def tab_titles() -> dict[str, str]:
    """{module stem: title} for every ui/tab_*.py, read from its source (importing ui would load gradio)."""
    titles = {}
    for path in sorted((ROOT / "ui").glob("tab_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "title" for t in node.targets):
                titles[path.stem] = ast.literal_eval(node.value)
    return titles


def tab_group_members() -> dict[str, list[str]]:
    """{group name: [tab titles]} of TAB_GROUPS in ui/__init__.py, in order ({} while the tabs are not grouped)."""
    titles = {}                                          # tab class name -> its title
    for path in (ROOT / "ui").glob("tab_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.Assign) and getattr(item.targets[0], "id", None) == "title":
                        titles[node.name] = ast.literal_eval(item.value)
    for node in ast.parse((ROOT / "ui" / "__init__.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "TAB_GROUPS":
            return {ast.literal_eval(group.elts[0]): [titles[cls.id] for cls in group.elts[1].elts]
                    for group in node.value.elts}
    return {}


def tab_groups() -> list[str]:
    return list(tab_group_members())


def test_the_readme_lists_every_tab_and_group():
    text = README.read_text(encoding="utf-8")
    table = text.split("## The tabs", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip().strip("*") for line in table.splitlines() if line.startswith("| **")]
    titles = tab_titles()
    assert len(titles) >= 10
    assert sorted(set(titles.values()) - set(rows)) == [], "tabs missing from the README's table"
    assert [row for row in rows if row in tab_groups()] == tab_groups(), "the README's table and TAB_GROUPS differ"


# ------------------------------------------------------------------ docs/ARCHITECTURE.md


def named_modules() -> set[str]:
    return set(MODULE_PATH.findall(ARCHITECTURE.read_text(encoding="utf-8")))


def test_architecture_names_only_files_that_exist():
    assert named_modules(), "docs/ARCHITECTURE.md names no module"
    assert sorted(m for m in named_modules() if not (ROOT / m).is_file()) == []


def test_architecture_names_every_module_of_diffusion_and_ui():
    modules = {str(p.relative_to(ROOT)) for pkg in ("diffusion", "ui") for p in (ROOT / pkg).glob("*.py")}
    assert len(modules) > 30
    assert sorted(modules - named_modules()) == [], "modules docs/ARCHITECTURE.md does not name"


def test_the_module_pattern_finds_paths_and_not_dotted_names():
    text = "`diffusion/sde.py` and ui/tab_live.py, bench/run_samplers.sh; not diffusion.metrics or ui/assets/"
    assert MODULE_PATH.findall(text) == ["diffusion/sde.py", "ui/tab_live.py", "bench/run_samplers.sh"]


# ------------------------------------------------------------------ docs/make_screenshots.py (its real run is not a test)


@pytest.fixture(scope="module")
def screenshots():
    spec = importlib.util.spec_from_file_location("make_screenshots", DOCS / "make_screenshots.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module           # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)       # the main guard: importing starts nothing
        yield module
    finally:
        del sys.modules[spec.name]


def test_there_is_a_screenshot_for_every_tab(screenshots):
    shot_tabs = {tab for shot in screenshots.SHOTS for tab in shot.tabs}
    assert sorted(set(tab_titles().values()) - shot_tabs) == []
    for group, members in tab_group_members().items():     # each shot opens its tab's group first
        assert {shot.tabs for shot in screenshots.SHOTS if shot.tabs[0] == group} == {(group, m) for m in members}
    names = [s.name for s in screenshots.SHOTS]
    assert len(names) == len(set(names))
    assert [s.path for s in screenshots.SHOTS if s.whole_page] == [Path("screenshot.png")]


def test_every_screenshot_a_page_shows_is_one_the_script_writes(screenshots):
    written = {str(Path("docs") / s.path) for s in screenshots.SHOTS}
    shown = set()
    for page in pages():
        for target in relative_links(page.read_text(encoding="utf-8")):
            file = (page.parent / target.partition("#")[0]).resolve()
            if file.suffix == ".png" and file.parent in (DOCS, DOCS / "screenshots") and "screenshot" in file.name + \
                    file.parent.name:
                shown.add(str(file.relative_to(ROOT)))
    assert sorted(shown - written) == [], "screenshots shown but not refreshed by docs/make_screenshots.py"


def test_screenshot_arguments(screenshots):
    args = screenshots.parse_args([])
    assert args.only is None and args.out_dir == DOCS and args.width >= 1280
    assert [s.name for s in screenshots.selected(args.only)] == [s.name for s in screenshots.SHOTS]
    args = screenshots.parse_args(["--only", "race", "live", "--out-dir", "/tmp/x"])
    assert [s.name for s in screenshots.selected(args.only)] == ["live", "race"] and args.out_dir == Path("/tmp/x")
    with pytest.raises(SystemExit):
        screenshots.parse_args(["--only", "no-such-shot"])
    with pytest.raises(SystemExit):
        screenshots.parse_args(["--width", "300"])


def test_a_screenshot_becomes_a_palette_png_that_looks_the_same(screenshots, tmp_path):
    from PIL import Image
    path = tmp_path / "shot.png"
    grey = Image.linear_gradient("L").resize((64, 64)).convert("RGB")           # 256 grey levels, as digits have
    grey.paste((249, 115, 22), (0, 0, 32, 8))                                   # and a flat UI colour
    grey.save(path)
    screenshots.to_palette(path)
    with Image.open(path) as out:
        assert out.mode == "P" and out.size == (64, 64)
        diff = [abs(a - b) for p, q in zip(out.convert("RGB").getdata(), grey.getdata()) for a, b in zip(p, q)]
    assert max(diff) <= 8 and sum(diff) / len(diff) < 2


# ------------------------------------------------------------------ the README's model table agrees with the cards


def readme_model_rows() -> dict[str, list[str]]:
    """{model name: [what, parameters, default sampling, headline figures]} from the README's model table."""
    table = README.read_text(encoding="utf-8").split("## The models", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        name = re.match(r"\| \[`([\w-]+)`\]", line)
        if name:
            rows[name.group(1)] = [cell.strip() for cell in line.strip().strip("|").split("|")[1:]]
    return rows


def shown_matches(shown: str, value: float) -> bool:
    """A figure as printed ("99.55", "2.00", "36.7") is `value` rounded to the printed decimals."""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return abs(float(shown) - value) <= 0.5 * 10 ** -decimals + 1e-9


def test_shown_matches_rounds_as_printed():
    assert shown_matches("2.00", 2.0034) and shown_matches("99.55", 99.55000281) and shown_matches("36.7", 36.7495)
    assert not shown_matches("2.00", 2.0051) and not shown_matches("36.8", 36.7495)


def test_the_readme_model_table_agrees_with_the_cards_and_metrics():
    import json
    metrics = json.loads((ROOT / "weights" / "metrics.json").read_text())
    rows = readme_model_rows()
    assert set(rows) == set(metrics), "the README's model table and weights/metrics.json name different models"
    for name, (_, params, sampling, figures) in rows.items():
        card = (ROOT / "weights" / name / "README.md").read_text(encoding="utf-8")
        assert f"- parameters: {params}\n" in card, name
        m = metrics[name]
        if "test_accuracy" in m:
            (acc,) = re.findall(r"test accuracy \*\*([\d.]+)%\*\*", figures)
            assert shown_matches(acc, 100 * m["test_accuracy"]), name
            continue
        if "reconstruction_accuracy" in m:
            (acc,) = re.findall(r"\*\*([\d.]+)%\*\*", figures)
            assert shown_matches(acc, 100 * m["reconstruction_accuracy"]), name
            continue
        ev = m["evaluators"]
        fd_c, fd_r = re.search(r"FD ratio \**([\d.]+) / ([\d.]+)", figures).groups()
        assert shown_matches(fd_c, ev["classifier"]["frechet_ratio"]), name
        assert shown_matches(fd_r, ev["classifier-resnet"]["frechet_ratio"]), name
        accuracy = re.search(r"accuracy \**([\d.]+)% / ([\d.]+)%", figures)
        if "conditional_accuracy" in ev["classifier"]:
            assert shown_matches(accuracy.group(1), 100 * ev["classifier"]["conditional_accuracy"]), name
            assert shown_matches(accuracy.group(2), 100 * ev["classifier-resnet"]["conditional_accuracy"]), name
        if m.get("guidance") is not None:
            from diffusion.registry import defaults_for
            default = defaults_for(name)         # the column shows the code's default sampling
            sampler, steps, w = re.search(r"`(\w+)`, (\d+) steps?, .*?w = ([\d.]+)", sampling).groups()
            assert (sampler, int(steps), float(w)) == (default.sampler, default.steps, default.guidance), name
            if (m["sampler"], m["steps"], m["guidance"]) != (default.sampler, default.steps, default.guidance):
                assert f"w = {m['guidance']:g}" in figures, f"{name}: its card's figures are at another setting: say so"


def test_the_readme_shows_how_each_default_was_chosen():
    """The README's rule-v3 table is bench/defaults_v3.py's rendering of the stored sweep: a rerun that changes a pick
    or a figure without the README fails here."""
    from bench.defaults_v3 import STORE, load_rows, readme_table
    from diffusion.registry import SAMPLEABLE_NAMES

    text = README.read_text(encoding="utf-8")
    lines = readme_table(load_rows(STORE), list(SAMPLEABLE_NAMES))
    assert len(lines) > 2
    missing = [line for line in lines if line not in text]
    assert not missing, "README.md's rule-v3 table is stale; paste:\n" + "\n".join(lines)


def test_the_readme_says_how_long_each_model_trained_from_its_record():
    """The README's training table is train/training_table.py's rendering of the committed records."""
    from train.training_table import table_lines

    text = README.read_text(encoding="utf-8")
    lines = table_lines()
    assert len(lines) == 2 + len(list((ROOT / "train" / "records").glob("*.json")))
    missing = [line for line in lines if line not in text]
    assert not missing, "README.md's training table is stale; paste `python -m train.training_table`:\n" + "\n".join(lines)
