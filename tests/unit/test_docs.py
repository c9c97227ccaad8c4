"""The docs site (mkdocs.yml, docs/) builds with warnings as errors, and what is generated in
it is current: the settings tables (scripts/settings_doc.py) and the charts (bench/charts.py).

A broken link or anchor fails the build, and so this test and CI; the README's links into
docs/ are checked against the built site.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 250


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    # No -v: mkdocs 1.6 skips its anchor check when logging at DEBUG.
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
         "--site-dir", str(site)],
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = _mkdocs_build(ROOT / "mkdocs.yml", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return out


def test_the_site_builds_strict(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "settings.html").is_file()
    assert (site / "charts" / "capacity-ladder.svg").is_file()


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("[x](settings.md#no-such-setting)", "does not contain an anchor '#no-such-setting'"),
        ("[x](#no-such-heading)", "there is no such anchor on this page"),
        ("[x](no-such-page.md)", "not found among documentation files"),
    ],
)
def test_a_broken_link_or_anchor_fails_the_build(
    tmp_path: Path, broken: str, message: str
) -> None:
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text() + f"\nSee {broken}.\n")
    result = _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def _load_settings_doc() -> ModuleType:
    path = ROOT / "scripts" / "settings_doc.py"
    spec = importlib.util.spec_from_file_location("settings_doc", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_settings_page_is_generated_from_the_model_and_current() -> None:
    settings_doc = _load_settings_doc()
    page = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert settings_doc.render(page) == page, "docs/settings.md is stale: run scripts/gen-docs"
    assert settings_doc.stale_notes() == [], "notes for settings that no longer exist"


def test_the_settings_generator_check_mode() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "settings_doc.py"), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr


def test_a_new_setting_gets_a_row_and_the_old_page_is_stale() -> None:
    settings_doc = _load_settings_doc()
    page = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    table = "\n".join(settings_doc.table("uplink"))
    assert "| `UPLOAD_BWLIMIT` | empty | text |" in table
    assert "| `UPLOAD_ORDER` | `oldest` | one of `oldest`, `newest` |" in table
    with pytest.raises(ValueError, match="missing"):
        settings_doc.render(page.replace("<!-- settings-table: uplink -->", "", 1))


def test_the_charts_are_current_and_well_formed(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.charts", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(p.name for p in (ROOT / "docs" / "charts").iterdir())
    for name in written:
        svg = (tmp_path / name).read_text(encoding="utf-8")
        assert ET.fromstring(svg).tag == "{http://www.w3.org/2000/svg}svg"
        committed = (ROOT / "docs" / "charts" / name).read_text(encoding="utf-8")
        assert svg == committed, f"docs/charts/{name} is stale: run scripts/gen-docs"


def test_every_chart_is_shown_on_a_page() -> None:
    pages = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md"))
    for chart in (ROOT / "docs" / "charts").iterdir():
        assert f"(charts/{chart.name})" in pages, chart.name


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.update(value for name, value in attrs if name == "id" and value)


def _ids(html: Path) -> set[str]:
    parser = _Ids()
    parser.feed(html.read_text(encoding="utf-8"))
    return parser.ids


def test_the_readme_is_a_landing_page_whose_links_resolve(site: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert any(link.startswith("docs/") for link in links)
    # GitHub's heading ids: lower case, punctuation dropped, spaces as hyphens.
    headings = {
        re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", h.strip().lower()))
        for h in re.findall(r"^#+ (.+)$", readme, flags=re.MULTILINE)
    }
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        path, _, anchor = link.partition("#")
        if not path:
            assert anchor in headings, f"README links to a missing heading: {link}"
            continue
        assert (ROOT / path).exists(), f"README links to a missing {path}"
        if anchor:
            assert re.fullmatch(r"docs/[\w-]+\.md", path), link
            built = site / path.removeprefix("docs/").replace(".md", ".html")
            assert anchor in _ids(built), f"README links to a missing anchor: {link}"


def test_the_readme_keeps_the_two_commands_and_the_recorder_profile() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for text in ("scripts/run-local", "scripts/test", "frag_keyframe+empty_moov",
                 "Hybrid MP4", "splitmuxsink", "mkdocs serve"):
        assert text in readme, text
    for script in ("scripts/run-local", "scripts/test"):
        assert (ROOT / script).stat().st_mode & 0o111, f"{script} is not executable"
