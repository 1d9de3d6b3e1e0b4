"""The app's batch uploads: zips with members that cannot be unpacked, one budget per request,
and nothing written outside the batch's own folder."""

import io
import zipfile

from marrowscope.core import uploads
from marrowscope.core.uploads import expand_uploads
from tests.conftest import synthetic_cell


def _png(k: int) -> bytes:
    b = io.BytesIO()
    synthetic_cell(k % 7, k).save(b, "PNG")
    return b.getvalue()


def _patch(data: bytes, name: str, local: int, central: int, value: int) -> bytes:
    """Set a 2-byte field of one member in its local header and its central directory entry."""
    buf = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        offset = zf.getinfo(name).header_offset
    buf[offset + local: offset + local + 2] = value.to_bytes(2, "little")
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        n = int.from_bytes(buf[pos + 28: pos + 30], "little")
        if bytes(buf[pos + 46: pos + 46 + n]).decode() == name:
            buf[pos + central: pos + central + 2] = value.to_bytes(2, "little")
        pos = data.find(b"PK\x01\x02", pos + 1)
    return bytes(buf)


def hostile_zip(path):
    """good, corrupt deflate stream, encrypted, Deflate64, good: in that order."""
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as zf:
        zf.writestr("a_good.png", _png(0))
        zf.writestr(zipfile.ZipInfo("b_corrupt.png"), _png(1), compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("c_encrypted.png", _png(2))
        zf.writestr("d_deflate64.png", _png(3))
        zf.writestr("e_good.png", _png(4))
    data = bytearray(b.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("b_corrupt.png")
    start = info.header_offset + 30 + len("b_corrupt.png")
    data[start + 10: start + 60] = b"\xff" * 50  # garbage inside the deflate stream
    data = _patch(bytes(data), "c_encrypted.png", 6, 8, 0x1)  # general purpose flag: encrypted
    path.write_bytes(_patch(data, "d_deflate64.png", 8, 10, 9))  # compression method 9: Deflate64
    return path


def test_hostile_zip_members_are_reported_and_the_rest_kept(tmp_path):
    z = hostile_zip(tmp_path / "cells.zip")
    work = tmp_path / "work"
    work.mkdir()
    got = expand_uploads([z], work)
    assert got.names == ["cells.zip/a_good.png", "cells.zip/e_good.png"]
    reasons = {p.source: p.reason for p in got.problems}
    assert set(reasons) == {"cells.zip/b_corrupt.png", "cells.zip/c_encrypted.png", "cells.zip/d_deflate64.png"}
    assert "encrypted" in reasons["cells.zip/c_encrypted.png"]
    assert "could not be unpacked" in reasons["cells.zip/b_corrupt.png"]
    assert "could not be unpacked" in reasons["cells.zip/d_deflate64.png"]
    assert all(f.parent == work and f.read_bytes()[:4] == b"\x89PNG" for f in got.files)


def test_one_budget_for_the_whole_request(tmp_path, monkeypatch):
    zips = []
    for k in range(2):
        z = tmp_path / f"z{k}.zip"
        with zipfile.ZipFile(z, "w") as zf:
            for j in range(3):
                zf.writestr(f"c{j}.png", _png(j))
        zips.append(z)
    one = len(_png(0)) + len(_png(1)) + len(_png(2))
    monkeypatch.setattr(uploads, "MAX_REQUEST_BYTES", int(one * 1.5))  # each zip fits, both do not
    got = expand_uploads(zips, tmp_path)
    assert 3 <= len(got.files) < 6
    assert got.problems and "at most" in got.problems[0].reason


def test_not_a_zip_is_a_sentence(tmp_path):
    z = tmp_path / "fake.zip"
    z.write_bytes(b"PK\x03\x04 not really")
    got = expand_uploads([z], tmp_path)
    assert got.files == [] and "not a readable zip" in got.problems[0].reason


def test_app_batch_with_hostile_zip_classifies_the_rest(predictor, tmp_path):
    from marrowscope.apps.app import batch, drop_batch

    z = hostile_zip(tmp_path / "cells.zip")
    rows, counts, _, _, downloads, note, review, state = batch(predictor, [str(z)])
    assert sum(c[1] for c in counts) == 2 and len(review) == 2
    assert "3 problem(s)" in note and "encrypted" in note
    # the session's state holds paths in the batch's folder, never image bytes
    assert all(isinstance(v, str) for cell in state["cells"] for v in cell)
    first = state["dir"]
    *_, state2 = batch(predictor, [str(z)], state)  # the next batch replaces the first's folder
    from pathlib import Path

    assert not Path(first).exists() and Path(state2["dir"]).is_dir()
    drop_batch(state2)  # what the state's expiry calls
    assert not Path(state2["dir"]).exists()
