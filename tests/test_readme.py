"""The README is a guide of bounded size with an Extending section, and its Layout section matches
the tree: every path it lists exists, and every package folder and module one level inside
``lightning_vl/``, ``data_modules/`` and ``callbacks/`` is listed.

The Layout section is a list of bullets, each starting with a backticked path from the repository
root; every other backticked name in a bullet is a path inside that bullet's folder."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_BYTES = 15_000
PACKAGES = ("lightning_vl", "data_modules", "callbacks")


def sections(text: str) -> dict[str, str]:
    """``## Title`` -> the text under it, up to the next ``## `` heading."""
    out, title, lines = {}, None, []
    for line in text.splitlines():
        if line.startswith("## "):
            if title is not None:
                out[title] = "\n".join(lines)
            title, lines = line[3:].strip(), []
        elif title is not None:
            lines.append(line)
    if title is not None:
        out[title] = "\n".join(lines)
    return out


def layout_paths(section: str) -> list[str]:
    """Every path the Layout section lists, relative to the repository root."""
    bullets, current = [], None
    for line in section.splitlines():
        if line.startswith("- "):
            current = [line[2:]]
            bullets.append(current)
        elif line.startswith("  ") and current is not None:
            current.append(line.strip())
        else:
            current = None
    paths = []
    for bullet in bullets:
        text = " ".join(bullet)
        # a line may list several heads, separated by " · " (tests/, docs/, reports/measured/, Makefile)
        for part in text.split(" · "):
            names = re.findall(r"`([^`]+)`", part)
            if not names or not part.startswith("`"):
                continue
            head, inner = names[0], names[1:]
            paths.append(head)
            if head.endswith("/"):
                paths += [head + name for name in inner]
            else:
                assert not inner, f"README Layout: {head} is a file, yet its bullet lists {inner}"
    return paths


def readme_sections() -> dict[str, str]:
    return sections(README.read_text(encoding="utf-8"))


def test_readme_is_a_guide_of_bounded_size():
    size = README.stat().st_size
    assert size <= MAX_BYTES, (f"README.md is {size:,} bytes, over {MAX_BYTES:,}: move measurements to "
                               "reports/measured/README.md and details to docs/")
    assert "Extending" in readme_sections(), "README.md has no '## Extending' section"


def test_layout_lists_only_paths_that_exist():
    layout = readme_sections().get("Layout")
    assert layout, "README.md has no '## Layout' section"
    paths = layout_paths(layout)
    assert len(paths) > 20, f"README Layout: parsed only {paths}; is it still a list of backticked paths?"
    missing = [p for p in paths if not (ROOT / p).exists() or (p.endswith("/") and not (ROOT / p).is_dir())]
    assert not missing, f"README Layout lists paths that do not exist: {missing}"


def test_layout_lists_every_package_and_module():
    listed = set(layout_paths(readme_sections()["Layout"]))
    expected = []
    for package in PACKAGES:
        for child in sorted((ROOT / package).iterdir()):
            if child.is_dir() and (child / "__init__.py").exists():
                expected.append(f"{package}/{child.name}/")
            elif child.suffix == ".py" and not child.name.startswith("__"):
                expected.append(f"{package}/{child.name}")
    assert expected
    unlisted = [p for p in expected if p not in listed]
    assert not unlisted, f"README Layout does not list {unlisted}"


def test_layout_parser_on_a_sample():
    sample = "- `pkg/` — `a.py` one, `sub/` two,\n  `b.py` three\n- `tests/` suite · `Makefile`\n\nprose `x.py`\n"
    assert layout_paths(sample) == ["pkg/", "pkg/a.py", "pkg/sub/", "pkg/b.py", "tests/", "Makefile"]
