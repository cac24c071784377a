"""MkDocs hooks for the sqtorch site (``hooks:`` in mkdocs.yml); MkDocs imports this file, sqtorch does not.

1. **API pages from the package tree.** Every public module under ``sqtorch/`` (no path component
   starting with ``_`` other than ``__init__.py``) is rendered by mkdocstrings (``::: module``) on the
   page of its area: ``api/<pkg>.md`` for the subpackage ``sqtorch/<pkg>/``, ``api/<mod>.md`` for a
   top-level module ``sqtorch/<mod>.py``, except the modules of :data:`SHARED_PAGES`, which share one
   page. Pages come in the order of :data:`ORDER` (the import-linter layers, bottom first), then any
   other area alphabetically, and are appended to the ``API reference`` section of the nav. A new or
   moved module therefore appears without editing anything; the strict build fails if its docstrings
   do not parse. A package's ``__init__`` is rendered with only the names it defines itself (its
   re-exports are documented in the module that defines them).
2. **Files outside docs/.** :data:`MIRRORED` repository files become pages of the site (README.md is
   the home page). Relative links in a page are resolved against the page's real location in the
   repository: a link into docs/ or to a mirrored file becomes the link to its page, a link to a
   public module's source file becomes the link to its API entry; any other link that leaves docs/
   is logged as a warning, so ``mkdocs build --strict`` fails on it, as on any other broken link.
3. **reST roles in docstrings** (:class:`SphinxRoles`, a griffe extension loaded by mkdocstrings):
   ``:class:`Name``` (``:func:``, ``:meth:``, ``:mod:``, ``:attr:``, ``:data:``, ...; ``~`` shows
   the last component only) becomes a cross-reference to the API entry that defines the object. A
   name is resolved as Python would from the docstring's scope (its object, the enclosing class and
   module, their imports), else as the one object of the package with that name. A name that
   resolves to no object of the package, or to several, is a warning, so a stale name fails the
   strict build; a private name (a ``_`` component) or an object outside the package is shown as code.
"""

from __future__ import annotations

import ast
import logging
import posixpath
import re
from pathlib import Path
from urllib.parse import urlsplit

import griffe
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.hooks.sqtorch")

ROOT = Path(__file__).resolve().parent
PACKAGE = "sqtorch"
DOCS_DIR = "docs"
API_DIR = "api"
NAV_SECTION = "API reference"
# page -> the top-level modules ``sqtorch/<mod>.py`` on it (instead of one page each)
SHARED_PAGES = {"runtime": ("runtime", "checks", "metrics")}
# page order: the import-linter layers of pyproject.toml, bottom first; other pages follow alphabetically
ORDER = ("runtime", "envs", "tabular", "evaluation", "neural", "gym", "baselines", "experiment")
# repository file -> its page in the site
MIRRORED = {"README.md": "index.md", "bench/RESULTS.md": "bench/RESULTS.md"}

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc|const):`(~?)([\w.\s]+)`")
_LINK = re.compile(r"(\]\()([^)\s]+)(\s+\"[^\"]*\")?\)")


def public_modules() -> list[tuple[str, Path]]:
    """(dotted name, path) of every public module of the package: a package, then its modules by name."""
    out = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py"), key=lambda p: (p.parent.parts, p.name != "__init__.py", p.name)):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts):
            continue
        out.append((".".join(parts), path))
    return out


def page_of(module: str) -> str:
    """The API page (name without ``.md``) that renders ``module``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "index"
    for page, mods in SHARED_PAGES.items():
        if len(parts) == 2 and parts[1] in mods:
            return page
    return parts[1]


def own_names(path: Path) -> list[str]:
    """Public names a module defines itself (functions, classes, assignments), in source order."""
    names = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return [n for n in dict.fromkeys(names) if not n.startswith("_") and n != "logger"]  # as filters in mkdocs.yml


def api_pages() -> dict[str, str]:
    """API page name -> its markdown, in nav order (the top-level package is not given a page)."""
    modules: dict[str, list[tuple[str, Path]]] = {}
    for module, path in public_modules():
        if module != PACKAGE:
            modules.setdefault(page_of(module), []).append((module, path))
    for page, shared in SHARED_PAGES.items():  # in the order of SHARED_PAGES
        if page in modules:
            modules[page].sort(key=lambda mp: shared.index(mp[0].split(".")[1]))
    order = [p for p in ORDER if p in modules] + sorted(set(modules) - set(ORDER))
    pages = {}
    for page in order:
        names = [m for m, _ in modules[page]]
        title = ", ".join(names) if page in SHARED_PAGES else names[0]
        lines = [f"# {title}", ""]
        for module, path in modules[page]:
            options = {}
            if module == title:  # the page's title is its heading
                options["show_root_heading"] = "false"
            if path.name == "__init__.py":
                options["members"] = own_names(path) or "false"
            lines.append(f"::: {module}")
            if options:
                lines += ["    options:"] + [f"      {k}: {v}" for k, v in options.items()]
            lines.append("")
        pages[page] = "\n".join(lines)
    return pages


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Append the generated API pages to the nav section :data:`NAV_SECTION`."""
    section = next((item for item in config.nav or [] if isinstance(item, dict) and NAV_SECTION in item), None)
    if section is None:
        raise ValueError(f"mkdocs.yml: nav has no '{NAV_SECTION}' section for the API pages")
    entries = section[NAV_SECTION]
    pages = [f"{API_DIR}/{page}.md" for page in api_pages()]
    entries = [e for e in (entries if isinstance(entries, list) else [entries]) if e not in pages]  # idempotent
    section[NAV_SECTION] = entries + pages
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the API pages and the mirrored repository files to the site."""
    for page, markdown in api_pages().items():
        files.append(File.generated(config, f"{API_DIR}/{page}.md", content=markdown))
    for src, uri in MIRRORED.items():
        if files.get_file_from_path(uri) is not None:
            raise ValueError(f"{DOCS_DIR}/{uri} exists: it would hide the mirrored {src}")
        files.append(File.generated(config, uri, abs_src_path=str(ROOT / src)))
    return files


def _site_uri(target: str) -> tuple[str | None, str]:
    """The page in the site of the repository path ``target`` (None if it has none), and an anchor."""
    if target.startswith(DOCS_DIR + "/"):
        return target[len(DOCS_DIR) + 1 :], ""
    if target in MIRRORED:
        return MIRRORED[target], ""
    modules = {str(path.relative_to(ROOT)): module for module, path in public_modules()}
    if target in modules:
        return f"{API_DIR}/{page_of(modules[target])}.md", modules[target]
    return None, ""


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Resolve the relative links of a page against its real location in the repository."""
    mirrored = {uri: src for src, uri in MIRRORED.items()}
    if page.file.generated_by is not None and page.file.src_uri not in mirrored:
        return markdown  # an API page: mkdocstrings and autorefs check its cross-references
    real = mirrored.get(page.file.src_uri, f"{DOCS_DIR}/{page.file.src_uri}")

    def fix(match: re.Match) -> str:
        url = match.group(2)
        parts = urlsplit(url)
        if parts.scheme or parts.netloc or url.startswith(("#", "/")):
            return match.group(0)
        target = posixpath.normpath(posixpath.join(posixpath.dirname(real), parts.path))
        if real.startswith(DOCS_DIR + "/") and target.startswith(DOCS_DIR + "/"):
            return match.group(0)  # inside docs/: MkDocs resolves and validates it
        uri, anchor = _site_uri(target)
        if uri is None:
            why = "is not part of the site" if (ROOT / target).exists() else "does not exist"
            site = f"docs/, {', '.join(MIRRORED)}, public modules of {PACKAGE}/"
            log.warning(f"{real} links to '{url}', which {why} (the site: {site})")
            return match.group(0)
        fragment = parts.fragment or anchor
        new = posixpath.relpath(uri, posixpath.dirname(page.file.src_uri) or ".") + (f"#{fragment}" if fragment else "")
        return f"{match.group(1)}{new}{match.group(3) or ''})"

    return _LINK.sub(fix, markdown)


class SphinxRoles(griffe.Extension):
    """Turn reST roles in the package's docstrings into mkdocstrings cross-references (see the module doc)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: object) -> None:
        if pkg.name != PACKAGE:
            return
        objects = list(_walk(pkg))
        by_name: dict[str, list[griffe.Object]] = {}
        for obj in objects:
            by_name.setdefault(obj.name, []).append(obj)
        for obj in objects:
            if obj.docstring is not None:
                obj.docstring.value = _ROLE.sub(lambda m, o=obj: _crossref(o, m, pkg, by_name), obj.docstring.value)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _crossref(obj: griffe.Object, match: re.Match, pkg: griffe.Module, by_name: dict) -> str:
    """``[`text`][path]`` for the role ``match`` in the docstring of ``obj`` (``` `text` ``` if not linkable)."""
    short, name = match.group(1), re.sub(r"\s+", "", match.group(2))  # a role may wrap a line
    text = f"`{name.rsplit('.', 1)[-1] if short else name}`"
    head, _, rest = name.partition(".")
    try:
        path = name if head == PACKAGE else obj.resolve(head) + (f".{rest}" if rest else "")
    except griffe.NameResolutionError:
        found = [o.path for o in by_name.get(name.rsplit(".", 1)[-1], []) if ("." + o.path).endswith("." + name)]
        if len(found) != 1:
            why = "no object" if not found else f"{len(found)} objects ({', '.join(found)})"
            log.warning(f"{obj.relative_filepath}:{obj.lineno}: {match.group(0)} names {why} of the package")
            return text
        path = found[0]
    if path.split(".", 1)[0] != PACKAGE:
        return text  # outside the package (torch, ...): no reference to check
    try:
        target = pkg.get_member(path.split(".", 1)[1]) if "." in path else pkg
        path = target.final_target.path if target.is_alias else target.path
    except (KeyError, griffe.AliasResolutionError):
        log.warning(f"{obj.relative_filepath}:{obj.lineno}: {match.group(0)} names no object of the package")
        return text
    if any(part.startswith("_") for part in path.split(".")):
        return text  # private or dunder: not rendered (filters in mkdocs.yml)
    return f"[{text}][{path}]"
