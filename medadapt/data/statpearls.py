"""StatPearls in MedRAG format from the NCBI archive: the seed's ``scripts/statpearls_prep.py``, ported.

MedRAG does not redistribute StatPearls (``MedRAG/statpearls`` on the Hub is empty); the seed built its own copy,
``MilyaShams/MedRAG_statpearls``, from NCBI's archive of the book (one ``.nxml`` JATS file per article). This module
makes the same chunks: per article section, paragraphs in order, a paragraph under 200 characters merged into the
previous chunk while the two stay under 1,000 characters, lists merged the same way (or one chunk per item when a
list is too long), ``<p><bold>…</bold></p>`` lines as sub-titles; ids ``<file stem>_<n>``, titles
``Article -- Section [-- Subsection]``, ``contents`` = title + content joined with one sentence end.

    python -m medadapt.data prepare statpearls [--archive statpearls_NBK430685.tar.gz | DIR] [--out DIR]

writes ``<data_dir>/statpearls/statpearls.jsonl`` (corpus ``local:statpearls``); without ``--archive`` the archive
is downloaded from NCBI first.
"""
from __future__ import annotations

import json
import logging
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

ARCHIVE_URL = "https://ftp.ncbi.nlm.nih.gov/pub/litarch/3d/12/statpearls_NBK430685.tar.gz"
SHORT, LONG = 200, 1000  # a paragraph under SHORT characters joins the previous chunk while both stay under LONG


def concat(title: str, content: str) -> str:
    """Title and content as one text with exactly one sentence end between them (MedRAG's ``contents``)."""
    title, content = title.strip(), content.strip()
    return f"{title} {content}" if title.endswith((".", "?", "!")) else f"{title}. {content}"


def extract_text(element: ET.Element) -> str:
    """All text of an element, its children and their tails, single-space joined."""
    text = (element.text or "").strip()
    for child in element:
        text += (" " if text else "") + extract_text(child)
        if child.tail and child.tail.strip():
            text += (" " if text else "") + child.tail.strip()
    return text.strip()


def is_subtitle(element: ET.Element) -> bool:
    """A ``<p>`` holding only one ``<bold>`` without trailing text: a sub-section title."""
    children = list(element)
    return (element.tag == "p" and len(children) == 1 and children[0].tag == "bold"
            and not (children[0].tail and children[0].tail.strip()))


def _record(stem: str, n: int, title: str, content: str) -> dict[str, str]:
    return {"id": f"{stem}_{n}", "title": title, "content": content, "contents": concat(title, content)}


def extract(source: str | Path | bytes, stem: str) -> list[dict[str, str]]:
    """The MedRAG chunks of one StatPearls ``.nxml`` article (a path, or its bytes with ``stem`` naming it)."""
    root = ET.fromstring(source) if isinstance(source, bytes) else ET.parse(source).getroot()
    title = root.find(".//title").text
    out: list[dict[str, str]] = []
    for sec in root.findall(".//sec"):
        sec_title = sec.find("./title").text.strip()
        prefix = " -- ".join([title, sec_title])
        last: dict[str, str] | None = None
        last_node: ET.Element | None = None
        for ch in sec:
            if is_subtitle(ch):
                last = None
                prefix = " -- ".join(prefix.split(" -- ")[:2] + [extract_text(ch)])
            elif ch.tag == "p":
                text = extract_text(ch)
                if len(text) < SHORT and last is not None and len(last["content"] + text) < LONG:
                    last["content"] = " ".join([last["content"], text])
                    last["contents"] = concat(last["title"], last["content"])
                else:
                    last = _record(stem, len(out), prefix, text)
                    out.append(last)
            elif ch.tag == "list":
                items = [extract_text(c) for c in ch]
                joined = " ".join(items)
                if last is not None and len(joined + last["content"]) < LONG:
                    last["content"] = " ".join([last["content"], *items])
                    last["contents"] = concat(last["title"], last["content"])
                elif len(joined) < LONG:
                    last = _record(stem, len(out), prefix, joined)
                    out.append(last)
                else:
                    last = None
                    out.extend(_record(stem, len(out) + i, prefix, c) for i, c in enumerate(items))
                if last_node is not None and is_subtitle(last_node):
                    prefix = " -- ".join([title, sec_title])
            last_node = ch
    return out


def iter_articles(archive: Path) -> Iterator[tuple[str, bytes]]:
    """``(stem, nxml bytes)`` of every article in a folder or a ``.tar.gz``, sorted by file name as the seed did."""
    if archive.is_dir():
        for path in sorted(archive.rglob("*.nxml"), key=lambda p: p.name):
            yield path.stem, path.read_bytes()
        return
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".nxml")),
                         key=lambda m: Path(m.name).name)
        for m in members:
            yield Path(m.name).stem, tar.extractfile(m).read()


def download(url: str, dest: Path) -> Path:
    """Fetch the NCBI archive once (kept in ``dest``)."""
    import urllib.request

    dest.mkdir(parents=True, exist_ok=True)
    path = dest / url.rsplit("/", 1)[-1]
    if not path.exists():
        log.info("downloading %s", url)
        tmp = path.with_suffix(".part")
        urllib.request.urlretrieve(url, tmp)  # noqa: S310 — a fixed https URL
        tmp.rename(path)
    return path


def prepare(archive: Path, out_dir: Path) -> tuple[Path, int, list[str]]:
    """Write every article's chunks to ``out_dir/statpearls.jsonl``; returns (file, chunks, articles that failed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "statpearls.jsonl"
    tmp = out.with_suffix(".jsonl.tmp")
    n, failed = 0, []
    with tmp.open("w", encoding="utf-8") as f:
        for stem, data in iter_articles(archive):
            try:
                chunks = extract(data, stem)
            except (ET.ParseError, AttributeError) as e:  # an article without a title or section title
                failed.append(f"{stem}: {type(e).__name__}: {e}")
                continue
            for rec in chunks:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += len(chunks)
    tmp.replace(out)
    return out, n, failed
