"""The documentation site builds strictly (no broken link, anchor or page), and the README's links land."""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).parent.parent
REPO = "https://git.example.com/tokend"  # where the site is built, the repository's own URL is given


def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    # The snippets extension reads config.example.toml relative to the folder mkdocs runs in.
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "TOKEND_REPO_URL": REPO})
    assert result.returncode == 0, result.stderr
    configuration = (tmp_path / "site" / "configuration" / "index.html").read_text()
    assert "allowed_hosts" in configuration and "--8&lt;--" not in configuration  # the example config is shown
    # The header links the repository; code blocks wrap (a config comment is not cut off at 1280 px) and leave
    # room for the copy button; the sidebar is five sections, not forty entries.
    assert f'href="{REPO}" title="Go to repository" class="md-source"' in configuration
    css = (tmp_path / "site" / "assets" / "extra.css").read_text()
    assert "white-space: pre-wrap" in css and "padding-right" in css and "assets/extra.css" in configuration
    loader = type("Loader", (yaml.SafeLoader,), {})
    loader.add_constructor("!ENV", lambda loader, node: None)  # mkdocs's own tag: the value is read where it builds
    nav = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=loader)["nav"]  # noqa: S506 (a safe loader)
    assert [next(iter(section)) for section in nav] == ["Start", "Providers", "Ways out", "Operate", "Reference"]


def test_the_readme_is_short_and_its_links_and_picture_are_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [target for target in targets if not re.match(r"[a-z]+:", target)]
    assert "docs/assets/overview.svg" in local and "docs/index.md" in local
    for target in local:
        path = target.split("#", 1)[0]
        assert (ROOT / path).exists(), target
