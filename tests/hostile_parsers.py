"""Hostile inputs for the tests: parsers that misbehave on purpose, and files built to hurt.

The parsers are loaded into the parser child through KMS_EXTRA_PARSERS; each stands for what a
hostile file can make a real parser do, and runs only in the child
(``search.ingestion.parsing.child``), never in the test process. The file builders make
zip bombs and oversized PDFs in memory, in milliseconds, so no large file is checked in.
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import struct
import sys
import time
import zipfile
import zlib

import docx

from search.ingestion.parsing.types import DocumentBuilder, ParsedDocument

# What the tests put in KMS_EXTRA_PARSERS: extension -> function of this module.
EXTRA_PARSERS = ",".join(
    f".{name}=tests.hostile_parsers:{name}"
    for name in (
        *("plain", "inspect", "size", "large", "grow", "allocate", "explode"),
        *("hang", "spin", "abort", "chatty", "leave"),
    )
)


def plain(data: bytes) -> ParsedDocument:
    """A well-behaved custom format: the bytes are the text."""
    builder = DocumentBuilder()
    builder.add(data.decode())
    return builder.build("Plain")


def inspect(data: bytes) -> ParsedDocument:
    """Reports the child's own limits and what it has imported, as JSON text."""
    builder = DocumentBuilder()
    facts = {
        "address_space": resource.getrlimit(resource.RLIMIT_AS)[0],
        "cpu_seconds": resource.getrlimit(resource.RLIMIT_CPU)[0],
        "django": any(name.split(".")[0] == "django" for name in sys.modules),
        "stdin": os.path.realpath(f"/proc/self/fd/{sys.stdin.fileno()}"),
    }
    builder.add(json.dumps(facts))
    return builder.build()


def size(data: bytes) -> ParsedDocument:
    """Reports how many bytes arrived, to check that large payloads get through whole."""
    builder = DocumentBuilder()
    builder.add(f"{len(data)} bytes, {data.count(0)} zeros")
    return builder.build()


def large(data: bytes) -> ParsedDocument:
    """A large answer: ``int(data)`` characters of text in paragraphs of 1,000."""
    builder = DocumentBuilder()
    paragraph = ("lorem ipsum " * 84)[:998]
    for _ in range(int(data) // 1000):
        builder.add(paragraph)
    return builder.build()


_KEPT: list[bytes] = []


def grow(data: bytes) -> ParsedDocument:
    """Succeeds, but leaves the child ``int(data)`` MiB bigger (a leak or a fragmented heap)."""
    _KEPT.append(b"x" * (int(data) << 20))
    return plain(b"grown")


def allocate(data: bytes) -> ParsedDocument:
    """Allocates without end, like a decompression bomb: RLIMIT_AS turns it into MemoryError."""
    hoard = []
    while True:
        hoard.append(b"x" * (16 << 20))


def explode(data: bytes) -> ParsedDocument:
    """A parser bug that is not a ParseError."""
    raise KeyError("no such part")


def hang(data: bytes) -> ParsedDocument:
    """Waits forever, like a parser stuck in I/O or a lock."""
    while True:
        time.sleep(60)


def spin(data: bytes) -> ParsedDocument:
    """Loops forever on the CPU, like a parser caught in a cyclic structure."""
    while True:
        pass


def abort(data: bytes) -> ParsedDocument:
    """Crashes the process, like a C extension hitting a fatal error."""
    os.abort()


def chatty(data: bytes) -> ParsedDocument:
    """Prints to stdout, which must not corrupt the protocol on the child's real stdout."""
    print("noise on stdout")
    sys.stdout.flush()
    return plain(data)


def leave(data: bytes) -> ParsedDocument:
    """Calls sys.exit, which must fail this file like any other unexpected exception."""
    sys.exit("leaving")


def kill_parent(data: bytes) -> ParsedDocument:
    """Kills the worker that started the child: what a file that takes its worker down does.

    Not in ``EXTRA_PARSERS`` and not used by these tests (it would kill pytest): it is for
    tests that run a real worker process.
    """
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(5)
    return plain(data)


# --- files ---------------------------------------------------------------------------------------


def small_docx(text: str = "A harmless paragraph.") -> bytes:
    document = docx.Document()
    document.add_paragraph(text)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def with_members(archive: bytes, members: dict[str, bytes]) -> bytes:
    """``archive`` with ``members`` added (deflated) or, for existing names, replaced."""
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(archive)) as source,
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            if info.filename not in members:
                target.writestr(info, source.read(info))
        for name, data in members.items():
            target.writestr(name, data)
    return buffer.getvalue()


def declaring(archive: bytes, sizes: dict[str, int]) -> bytes:
    """Rewrite the uncompressed sizes the archive declares for some members (a crafted zip).

    Both the central directory (what ``zipfile`` believes) and each local header are patched.
    """
    out = bytearray(archive)
    end = out.rfind(b"PK\x05\x06")
    (entries,) = struct.unpack_from("<H", out, end + 10)
    (position,) = struct.unpack_from("<I", out, end + 16)
    for _ in range(entries):
        name_length, extra_length, comment_length = struct.unpack_from("<3H", out, position + 28)
        name = bytes(out[position + 46 : position + 46 + name_length]).decode()
        if name in sizes:
            struct.pack_into("<I", out, position + 24, sizes[name])
            (local,) = struct.unpack_from("<I", out, position + 42)
            struct.pack_into("<I", out, local + 22, sizes[name])
        position += 46 + name_length + extra_length + comment_length
    return bytes(out)


def docx_declaring_gib(gib: int) -> bytes:
    """A DOCX whose members claim ``gib`` GiB in all (each just under 4 GiB, the zip32 limit)."""
    count = -(-(gib << 30) // 0xFFFFFFFE)  # 0xFFFFFFFF would mean "see the zip64 field"
    names = [f"word/media/part{i}.bin" for i in range(count)]
    archive = with_members(small_docx(), {name: b"\0" * 1024 for name in names})
    return declaring(archive, {name: (gib << 30) // count for name in names})


def docx_with_ratio(mib: int = 50) -> bytes:
    """A DOCX holding ``mib`` MiB of zeros, which deflate about 1000 to 1."""
    return with_members(small_docx(), {"word/media/zeros.bin": bytes(mib << 20)})


def docx_understating(mib: int = 64) -> bytes:
    """A DOCX whose document part inflates to ``mib`` MiB but declares its original size."""
    original = small_docx()
    with zipfile.ZipFile(io.BytesIO(original)) as archive:
        declared = archive.getinfo("word/document.xml").file_size
    bomb = with_members(original, {"word/document.xml": b" " * (mib << 20)})
    return declaring(bomb, {"word/document.xml": declared})


def raw_pdf(objects: list[bytes]) -> bytes:
    """A PDF of ``objects`` (object 1 is the catalog) with a correct cross-reference table."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def pdf_of_pages(count: int, declared: int | None = None) -> bytes:
    """``count`` empty pages in one page tree node; ``declared`` is the /Count it claims."""
    kids = b" ".join(b"%d 0 R" % number for number in range(3, count + 3))
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"
    return raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [%s] /Count %d >>"
            % (kids, count if declared is None else declared),
            *[page] * count,
        ]
    )


def pdf_inflating(streams: int = 3, mib: int = 60) -> bytes:
    """One page whose content is ``streams`` deflated streams of ``mib`` MiB of spaces each.

    pypdf decodes and joins them, so parsing needs several times ``streams * mib`` MiB.
    """
    stream = zlib.compress(b" " * (mib << 20), 9)
    body = b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(stream), stream)
    contents = b" ".join(b"%d 0 R" % (5 + i) for i in range(streams))
    return raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 4 0 R >> >> /Contents [%s] >>" % contents,
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            *[body] * streams,
        ]
    )
