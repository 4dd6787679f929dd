"""Regenerate the sample corpus from CPython's own docstrings.

    python corpus/build_corpus.py            # writes corpus/python-stdlib/<module>.md

Each module becomes one Markdown file: a title line ``# <module> — <summary>``, the module docstring,
then one section per documented class, function or method (its signature and docstring). The text is
CPython's (PSF License, see LICENSE-PSF.txt); the output depends on the interpreter's version, which is
recorded in the corpus README (3.11.7 for the shipped files).
"""
from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "python-stdlib"

# module -> (one-line summary, members to document). Summaries are the docstring's first sentence,
# shortened where the docstring has none or the sentence runs on; members are the main public API.
MODULES: dict[str, tuple[str, list[str]]] = {
    "json": ("JSON encoder and decoder", [
        "dump", "dumps", "load", "loads", "JSONEncoder", "JSONEncoder.default", "JSONDecoder",
        "JSONDecodeError"]),
    "pathlib": ("Object-oriented filesystem paths", [
        "PurePath", "Path", "Path.cwd", "Path.home", "Path.glob", "Path.rglob", "Path.iterdir",
        "Path.mkdir", "Path.read_text", "Path.write_text", "Path.resolve", "Path.exists", "Path.unlink",
        "PurePath.relative_to", "PurePath.with_suffix", "PurePath.is_relative_to"]),
    "functools": ("Tools for working with functions and callable objects", [
        "reduce", "partial", "partialmethod", "lru_cache", "cache", "cached_property", "wraps",
        "update_wrapper", "total_ordering", "cmp_to_key", "singledispatch", "singledispatchmethod"]),
    "itertools": ("Functional tools for creating and using iterators", [
        "count", "cycle", "repeat", "accumulate", "chain", "chain.from_iterable", "dropwhile", "takewhile",
        "groupby", "islice", "pairwise", "tee", "zip_longest", "product", "permutations", "combinations",
        "combinations_with_replacement"]),
    "collections": ("Specialized container datatypes", [
        "namedtuple", "deque", "deque.rotate", "Counter", "Counter.most_common", "OrderedDict",
        "OrderedDict.move_to_end", "defaultdict", "ChainMap", "ChainMap.new_child"]),
    "contextlib": ("Utilities for with-statement contexts", [
        "contextmanager", "asynccontextmanager", "closing", "suppress", "redirect_stdout", "nullcontext",
        "chdir", "ExitStack", "ExitStack.enter_context", "ExitStack.callback", "AsyncExitStack",
        "AbstractContextManager"]),
    "argparse": ("Command-line parsing library", [
        "ArgumentParser", "ArgumentParser.add_argument", "ArgumentParser.parse_args",
        "ArgumentParser.parse_known_args", "ArgumentParser.add_subparsers",
        "ArgumentParser.add_mutually_exclusive_group", "Action", "FileType", "Namespace", "ArgumentError"]),
    "logging": ("Logging package for Python, based on PEP 282", [
        "basicConfig", "getLogger", "Logger", "Logger.setLevel", "Logger.debug", "Logger.info",
        "Logger.warning", "Logger.error", "Logger.exception", "Logger.addHandler", "Handler",
        "Handler.setFormatter", "StreamHandler", "FileHandler", "NullHandler", "Formatter",
        "Formatter.format", "Filter", "LogRecord", "LoggerAdapter", "captureWarnings", "disable"]),
    "sqlite3": ("DB-API 2.0 interface for SQLite databases", [
        "connect", "Connection", "Connection.execute", "Connection.executemany", "Connection.commit",
        "Connection.cursor", "Connection.create_function", "Cursor", "Cursor.execute", "Cursor.executemany",
        "Cursor.fetchone", "Cursor.fetchmany", "Cursor.fetchall", "Row", "register_adapter",
        "register_converter"]),
    "datetime": ("Basic date and time types", [
        "date", "date.today", "date.fromisoformat", "time", "datetime", "datetime.now",
        "datetime.fromtimestamp", "datetime.timestamp", "datetime.strptime", "datetime.strftime",
        "datetime.fromisoformat", "datetime.isoformat", "datetime.astimezone", "datetime.replace",
        "timedelta", "timedelta.total_seconds", "timezone", "tzinfo"]),
    "heapq": ("Heap queue algorithm (a.k.a. priority queue)", [
        "heappush", "heappop", "heapify", "heapreplace", "heappushpop", "merge", "nlargest", "nsmallest"]),
    "bisect": ("Bisection algorithms for sorted lists", [
        "bisect_left", "bisect_right", "insort_left", "insort_right"]),
    "shutil": ("Utility functions for copying and archiving files and directory trees", [
        "copyfile", "copy", "copy2", "copytree", "rmtree", "move", "disk_usage", "which", "make_archive",
        "unpack_archive", "get_terminal_size"]),
    "subprocess": ("Subprocesses with accessible I/O streams", [
        "run", "Popen", "Popen.communicate", "Popen.wait", "Popen.kill", "call", "check_output",
        "CompletedProcess", "CompletedProcess.check_returncode", "CalledProcessError", "TimeoutExpired"]),
    "tempfile": ("Generate temporary files and directories", [
        "TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "TemporaryDirectory",
        "TemporaryDirectory.cleanup", "mkstemp", "mkdtemp", "gettempdir", "gettempprefix"]),
    "textwrap": ("Text wrapping and filling", [
        "wrap", "fill", "shorten", "dedent", "indent", "TextWrapper", "TextWrapper.wrap",
        "TextWrapper.fill"]),
    "unittest": ("Python unit testing framework, based on JUnit", [
        "TestCase", "TestCase.setUp", "TestCase.subTest", "TestCase.assertEqual", "TestCase.assertIn",
        "TestCase.assertRaises", "TestCase.assertAlmostEqual", "TestCase.assertLogs",
        "TestCase.assertCountEqual", "TestCase.addCleanup", "IsolatedAsyncioTestCase", "TestSuite",
        "TestLoader", "TestLoader.discover", "TextTestRunner", "skip", "skipIf", "expectedFailure",
        "main"]),
    "statistics": ("Basic statistics: averages, spread and relations of numeric data", [
        "mean", "fmean", "geometric_mean", "median", "mode", "multimode", "quantiles", "pstdev", "stdev",
        "variance", "correlation", "covariance", "linear_regression", "NormalDist",
        "NormalDist.from_samples", "NormalDist.inv_cdf", "StatisticsError"]),
    "secrets": ("Cryptographically strong random numbers for managing secrets", [
        "token_bytes", "token_hex", "token_urlsafe", "choice", "randbelow", "randbits", "compare_digest",
        "SystemRandom"]),
    "hashlib": ("A common interface to many hash functions", [
        "new", "sha256", "blake2b", "pbkdf2_hmac", "scrypt", "file_digest"]),
    "zipfile": ("Read and write ZIP files", [
        "ZipFile", "ZipFile.open", "ZipFile.write", "ZipFile.writestr", "ZipFile.read", "ZipFile.extract",
        "ZipFile.extractall", "ZipFile.namelist", "ZipInfo", "is_zipfile", "Path", "BadZipFile"]),
    "csv": ("CSV parsing and writing", [
        "reader", "writer", "DictReader", "DictWriter", "DictWriter.writeheader", "Sniffer",
        "Sniffer.sniff", "Sniffer.has_header", "register_dialect", "Dialect"]),
    "re": ("Support for regular expressions", [
        "compile", "search", "match", "fullmatch", "split", "findall", "finditer", "sub", "subn", "escape",
        "purge", "error"]),
    "dataclasses": ("Generate special methods for classes from field annotations", [
        "dataclass", "field", "Field", "fields", "asdict", "astuple", "make_dataclass", "replace",
        "is_dataclass", "InitVar", "FrozenInstanceError"]),
    "queue": ("A multi-producer, multi-consumer queue", [
        "Queue", "Queue.put", "Queue.get", "Queue.task_done", "Queue.join", "LifoQueue", "PriorityQueue",
        "SimpleQueue", "Empty", "Full"]),
}


def _resolve(module: object, dotted: str) -> object | None:
    obj: object | None = module
    for part in dotted.split("."):
        obj = inspect.getattr_static(obj, part, None) if inspect.isclass(obj) else getattr(obj, part, None)
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        if obj is None:
            return None
    return obj


def _signature(obj: object) -> str:
    try:
        sig = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"
    # reprs of defaults carry memory addresses: strip them so the corpus is reproducible
    sig = re.sub(r"<function ([\w.]+) at 0x[0-9a-f]+>", r"\1", sig)
    sig = re.sub(r"<class '([\w.]+)'>", r"\1", sig)
    sig = re.sub(r" at 0x[0-9a-f]+", "", sig)
    return sig if len(sig) <= 160 else sig[:157].rsplit(",", 1)[0] + ", ...)"


def _markdown(doc: str) -> str:
    """Docstring → Markdown: doctest sessions and ``::`` literal blocks become fenced code."""
    lines = doc.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        prev_i = next((j for j in range(len(out) - 1, -1, -1) if out[j].strip()), None)
        prev = out[prev_i] if prev_i is not None else ""
        if line.lstrip().startswith(">>>"):
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i].rstrip())
                i += 1
        elif indent and line.strip() and prev.endswith("::"):
            block = []
            while i < len(lines) and (not lines[i].strip() or
                                      len(lines[i]) - len(lines[i].lstrip()) >= indent):
                block.append(lines[i].rstrip())
                i += 1
            while block and not block[-1]:
                block.pop()
        else:
            out.append(line.rstrip())
            i += 1
            continue
        if prev.endswith("::"):  # RST "Example::" → "Example:"
            out[prev_i] = prev[:-1]
        if out and out[-1]:
            out.append("")
        out += ["```", *block, "```", ""]
    return "\n".join(out).strip()


MODULE_DOC_CHARS = 1_500  # docstrings are cut after the paragraph that crosses these limits, keeping
MEMBER_DOC_CHARS = 800    # the corpus near 120 KB: ~180 chunks, which the offline embedder ingests fast


def _cut(doc: str, limit: int) -> str:
    """The leading paragraphs of ``doc`` up to ``limit`` characters (always at least the first)."""
    paras = re.split(r"\n\s*\n", doc)
    out, size = [], 0
    for p in paras:
        if out and size + len(p) > limit:
            break
        out.append(p)
        size += len(p) + 2
    while len(out) > 1 and out[-1].rstrip().endswith(":"):  # an intro whose example was cut off
        out.pop()
    return "\n\n".join(out)


def render(name: str, summary: str, members: list[str]) -> str:
    module = importlib.import_module(name)
    parts = [f"# {name} — {summary}", ""]
    doc = inspect.getdoc(module)
    if doc:
        parts += [_markdown(_cut(doc, MODULE_DOC_CHARS)), ""]
    for dotted in members:
        obj = _resolve(module, dotted)
        if obj is None:
            print(f"warning: {name}.{dotted} not found", file=sys.stderr)
            continue
        mdoc = inspect.getdoc(obj)
        if not mdoc:
            continue
        kind = "class " if inspect.isclass(obj) else ""
        level = "###" if "." in dotted else "##"
        sig = "" if inspect.isclass(obj) and issubclass(obj, BaseException) else _signature(obj)
        parts += [f"{level} {kind}{name}.{dotted}{sig}", "", _markdown(_cut(mdoc, MEMBER_DOC_CHARS)), ""]
    return "\n".join(parts).rstrip() + "\n"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, (summary, members) in MODULES.items():
        text = render(name, summary, members)
        (OUT / f"{name}.md").write_text(text, encoding="utf-8")
        total += len(text.encode())
        print(f"{name:12} {len(text.encode()):7,d} bytes")
    print(f"{len(MODULES)} files, {total:,d} bytes (Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
