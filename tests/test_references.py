"""Every reference in the repository can be followed from a clone: no tracked file (binary images
aside) cites a document that lives outside the repository or a path on one machine. Cite the
public source instead (UNITER's repository file, a paper section, the dataset's documentation) or
the project's own ``docs/``."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINARY = {".png", ".jpg", ".jpeg", ".gif", ".pdf", ".h5", ".pt"}
# built from parts, so that this file does not cite them itself
OUTSIDE_DOCUMENTS = [
    "uniter" + "-reference", "dataset" + "-formats", "shared" + "/reference", "reference" + "/paper",
    "lth" + "-anchors", "architecture" + "-sketch", "other" + "-backbones",
]
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:" + "|".join(["wo" + "rk", "ho" + "me", "Us" + "ers", "ro" + "ot"]) + r")/")
SOURCE_DIRS = ("lightning_vl", "data_modules", "callbacks", "configs", "tests", "docs", "reports/measured", ".ci")


def tracked_files() -> list[Path]:
    """The files git tracks; without git, the project's own folders and top-level files."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        files = [ROOT / name for name in out.decode().split("\0") if name]
        if files:
            return [f for f in files if f.is_file()]
    except (OSError, subprocess.CalledProcessError):
        pass
    files = [p for p in ROOT.iterdir() if p.is_file() and not p.name.startswith(".")]
    for folder in SOURCE_DIRS:
        files += [p for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return files


def citations(text: str) -> list[str]:
    found = [name for name in OUTSIDE_DOCUMENTS if name in text.lower()]
    return found + MACHINE_PATH.findall(text)


def test_no_file_cites_a_document_outside_the_repository():
    problems = []
    files = [f for f in tracked_files() if f.suffix.lower() not in BINARY]
    assert len(files) > 50
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            hits = citations(line)
            if hits:
                problems.append(f"{path.relative_to(ROOT)}:{lineno}: {hits}: {line.strip()[:100]}")
    assert not problems, ("files cite documents outside the repository or a machine's path; cite the public "
                          "source or docs/ instead:\n" + "\n".join(problems))


def test_the_check_catches_what_it_should():
    assert citations("see " + "uniter" + "-reference §1.4")
    assert citations("Written from /" + "work/shared/x.md")
    assert citations("at /" + "home/me/data")
    assert not citations("ChenRocks/UNITER model/model.py; --runs /shared/runs; data/demo/world")
