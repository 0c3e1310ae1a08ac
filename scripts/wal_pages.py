"""Which tables and indexes a SQLite WAL's frames wrote, per commit.

    python3 scripts/wal_pages.py DATABASE WAL

Reads the frames of the WAL's current generation (those whose salts match its header) and
maps each frame's page to the table or index that owns it in DATABASE, through SQLite's
`dbstat` table (Debian's Python SQLite has it). DATABASE is opened read-only from a copy taken
without the WAL, so the mapping is the database file's as the checkpointer left it; pages the
WAL added since are counted as `new`. To keep a running gateway's WAL, stop it with SIGKILL
(a clean stop checkpoints and removes it). docs/performance-log.md (*What a commit writes,
page by page*) shows what it found.
"""

import collections
import shutil
import sqlite3
import struct
import sys
import tempfile

WAL_HEADER = struct.Struct(">8I")
FRAME_HEADER = struct.Struct(">4I")


def frames(wal_path):
    """The page numbers of the current generation's frames, and how many commits they hold."""
    data = open(wal_path, "rb").read()
    _magic, _version, page_size, _seq, salt1, salt2, _c1, _c2 = WAL_HEADER.unpack_from(data)
    pages, commits = [], 0
    offset = WAL_HEADER.size
    while offset + 24 + page_size <= len(data):
        page, db_size_after_commit, s1, s2 = FRAME_HEADER.unpack_from(data, offset)
        if (s1, s2) != (salt1, salt2):
            break
        pages.append(page)
        commits += db_size_after_commit != 0
        offset += 24 + page_size  # a frame: its 24-byte header, then the page
    return pages, commits


def owners(db_path):
    """Page number -> table or index name."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = f"{scratch}/copy.sqlite"
        shutil.copy(db_path, copy)
        connection = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
        try:
            return dict(connection.execute("SELECT pageno, name FROM dbstat"))
        finally:
            connection.close()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    pages, commits = frames(sys.argv[2])
    owner = owners(sys.argv[1])
    written = collections.Counter(owner.get(p, "new") for p in pages)
    distinct = collections.Counter(owner.get(p, "new") for p in set(pages))
    per = max(commits, 1)
    print(f"{len(pages)} frames in {commits} commits: {len(pages) / per:.2f} a commit")
    for name, n in written.most_common():
        print(f"{name:45} {n:9} frames {n / per:7.2f} a commit {distinct[name]:8} pages")


if __name__ == "__main__":
    main()
