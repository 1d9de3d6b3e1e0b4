"""The app: handlers as plain functions, the launched app through gradio_client, the Space export."""

import io
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from marrowscope.apps.app import batch, build_demo, classify, review_export
from marrowscope.apps.views import data_views, model_views
from marrowscope.core.classes import CLASSES
from tests.conftest import synthetic_cell


@pytest.fixture(scope="module")
def explainer(tiny_model):
    from marrowscope.report.explain import Explainer

    return Explainer(tiny_model)


def _save(tmp_path, name, im=None):
    p = tmp_path / name
    (im or synthetic_cell(1, 3)).save(p)
    return str(p)


def test_classify_top3_overlay_and_review_flag(predictor, explainer, tmp_path):
    top, overlay, advice = classify(predictor.again(review_below=1.01), explainer, _save(tmp_path, "a.png"))
    assert len(top) == 3 and all("(" in k for k in top)  # full names with codes
    assert list(top.values()) == sorted(top.values(), reverse=True) and sum(top.values()) <= 1 + 1e-6
    assert overlay.size == (32, 32)
    assert "Review by a person" in advice
    _, _, advice = classify(predictor.again(review_below=0.0), None, _save(tmp_path, "b.png"))
    assert "Most likely" in advice


@pytest.mark.parametrize("content", [b"", b"%PDF-1.4 not an image", b"\xff\xd8\xff\xe0 truncated"])
def test_classify_bad_upload_is_a_sentence(predictor, tmp_path, content):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(gr.Error) as exc:
        classify(predictor, None, str(p))
    assert "bad.jpg" in exc.value.message and str(tmp_path) not in exc.value.message


def test_batch_with_zip_and_bad_file_then_review_export(predictor, tmp_path):
    good = [_save(tmp_path, f"c{k}.png", synthetic_cell(k, k)) for k in range(3)]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    z = tmp_path / "more.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for k in range(2):
            b = io.BytesIO()
            synthetic_cell(k + 3, k).save(b, "PNG")
            zf.writestr(f"../../evil/c{k}.png", b.getvalue())  # a path that must not be extracted
        zf.writestr("readme.txt", "not an image")
    rows, counts, decisions, fig, downloads, note, review, state = batch(predictor, [*good, str(bad), str(z)])
    assert sum(n for _, n in decisions) == 5 and [d for d, _ in decisions] == ["accepted", "review", "possible-blast"]
    assert len(rows) == 6 and sum(c[1] for c in counts) == 5
    assert "broken.png" in note and "1 problem" in note
    assert all(Path(d).is_file() for d in downloads)
    _assert_nothing_extracted_by_member_path(tmp_path, state)
    review[0][3] = "PMO"  # a person corrects the first cell
    files, msg = review_export(list(CLASSES), review, state)
    assert "5 reviewed" in msg
    with zipfile.ZipFile(files[0]) as zf:
        names = zf.namelist()
    assert any(n.startswith("PMO/") for n in names) and "labels.csv" in names
    # the exported tree trains: it is a class-folder tree with a manifest beside it
    from marrowscope.core.data import load_samples

    samples, _ = load_samples(files[1])
    assert len(samples) == 5 and samples[0].path.exists()
    assert sorted(s.label for s in samples) == sorted([*[r[3] for r in review]])


def _assert_nothing_extracted_by_member_path(tmp_path, state):
    """'../../evil/c0.png' written by its stored path would land two folders above wherever it was
    extracted: look above every folder the app or the test could have used, and in the batch folder."""
    import tempfile

    places = {Path("/"), Path(tempfile.gettempdir()), Path(state["dir"]), *Path(state["dir"]).parents,
              *tmp_path.parents, Path.cwd(), *Path.cwd().parents}
    for place in places:
        assert not (place / "evil").exists(), place / "evil"
    # zip members are copied under index names only
    import re

    names = [p.name for p in Path(state["dir"]).iterdir()]
    assert names and all(re.fullmatch(r"\d{5}\.png|predictions(_counts)?\.csv", n) for n in names), names


def test_review_rejects_unknown_labels(predictor, tmp_path):
    *_, review, state = batch(predictor, [_save(tmp_path, "a.png")])
    review[0][3] = "XYZ"
    with pytest.raises(gr.Error, match="XYZ"):
        review_export(list(CLASSES), review, state)


@pytest.mark.slow
def test_adapt_to_reviewed_cells_switches_this_session_only_and_back(predictor, explainer, tmp_path):
    from marrowscope.apps.app import review_adapt
    from marrowscope.apps.app_models import SessionModels, use_bundled

    models = SessionModels(predictor, explainer)
    images = [_save(tmp_path, f"c{k}.png", synthetic_cell(k % 7, 100 + k)) for k in range(14)]
    *_, review, state = batch(predictor, images)
    for k, row in enumerate(review):
        row[3] = CLASSES[k % 7]  # a person's labels
    zipped, note, model_state, in_use = review_adapt(models, list(CLASSES), review, state, {},
                                                     progress=lambda *a, **k: None)
    assert "config.json" in zipfile.ZipFile(zipped).namelist() and "Adapted on" in note
    assert "adapted in this session" in in_use
    adapted, adapted_cam = models.get(model_state)
    assert adapted is not predictor and adapted.model_dir == Path(model_state["model"]) and adapted_cam is not None
    assert models.get({})[0] is predictor  # other sessions keep the bundled model
    top, overlay, _ = classify(adapted, adapted_cam, images[0])
    assert len(top) == 3 and overlay is not None
    _, empty, banner = use_bundled(models, model_state)
    assert models.get(empty)[0] is predictor and "bundled" in banner
    assert not Path(model_state["dir"]).exists()  # the adapted folder goes with the switch back


def test_adapt_without_a_reviewed_batch_is_a_sentence(predictor):
    from marrowscope.apps.app import review_adapt
    from marrowscope.apps.app_models import SessionModels

    with pytest.raises(gr.Error, match="Classify a batch first"):
        review_adapt(SessionModels(predictor), list(CLASSES), [], {}, {}, progress=lambda *a, **k: None)


@pytest.mark.slow
def test_fit_to_the_batch_lab_without_labels_switches_the_session_and_never_accepts(predictor, explainer, tmp_path):
    from marrowscope.apps.app import batch_fit
    from marrowscope.apps.app_models import SessionModels

    models = SessionModels(predictor, explainer)
    images = [_save(tmp_path, f"c{k}.png", synthetic_cell(k % 7, 300 + k)) for k in range(110)]
    *_, state = batch(predictor, images)
    zipped, note, model_state, in_use = batch_fit(models, state, {}, progress=lambda *a, **k: None)
    assert "config.json" in zipfile.ZipFile(zipped).namelist()
    assert "Fitted without labels on 110 cells" in note and "never accepted" in note
    assert "fitted without labels on 110 cells" in in_use
    fitted = models.get(model_state)[0]
    assert fitted.info.label_free["images"] == 110 and models.get({})[0] is predictor
    rows = batch(fitted.again(review_below=0.0), images[:14])[0]
    assert rows and not any(r[4] == "accepted" for r in rows)
    assert not (Path(model_state["dir"]) / "cells").exists()  # the copies of the batch's cells are gone


def test_fit_to_a_batch_lab_needs_a_batch_of_enough_cells(predictor, tmp_path):
    from marrowscope.apps.app import batch_fit
    from marrowscope.apps.app_models import SessionModels

    models = SessionModels(predictor)
    with pytest.raises(gr.Error, match="Classify a batch of this lab's cells first"):
        batch_fit(models, {}, {}, progress=lambda *a, **k: None)
    *_, state = batch(predictor, [_save(tmp_path, f"c{k}.png", synthetic_cell(k % 7, k)) for k in range(5)])
    with pytest.raises(gr.Error, match="has 5 readable cell.*at least 100"):
        batch_fit(models, state, {}, progress=lambda *a, **k: None)


def test_model_and_data_views_read_the_folder(tiny_model, tmp_path):
    v = model_views(tiny_model)
    assert v["curves"].endswith("curves.png")
    assert "no test report" in v["metrics_note"] and "MODEL_CARD" in v["card"]
    fig, rows, note = data_views(tiny_model, list(CLASSES))
    assert fig is not None and len(rows) == 7
    assert all(r[1] + r[2] + r[3] == r[4] == 16 for r in rows)  # train + val + test = 16 per class
    import shutil

    bare = shutil.copytree(tiny_model, tmp_path / "bare")
    (bare / "manifest.csv").unlink()
    assert data_views(bare, list(CLASSES))[0] is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_launched_app_through_gradio_client(predictor, explainer, tmp_path):
    from gradio_client import Client, handle_file

    demo = build_demo(predictor, explainer=explainer)
    demo.queue()
    port = _free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, max_file_size="1mb")
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        top, _, _ = client.predict(handle_file(_save(tmp_path, "a.png")), 0, api_name="/classify")
        confs = [c["confidence"] for c in top["confidences"]]
        assert len(confs) == 3 and confs == sorted(confs, reverse=True) and sum(confs) <= 1 + 1e-6
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"nope")
        with pytest.raises(Exception, match="not an image format"):
            client.predict(handle_file(str(bad)), 0, api_name="/classify")
        big = tmp_path / "big.bmp"
        Image.new("RGB", (1000, 1000)).save(big)  # 3 MB, above this app's 1 MB limit
        with pytest.raises(Exception, match="(?i)file.*(size|large|exceed)"):
            client.predict(handle_file(str(big)), 0, api_name="/classify")
        top, _, _ = client.predict(handle_file(_save(tmp_path, "b.png")), 0, api_name="/classify")  # still serving
        assert len(top["confidences"]) == 3
        import urllib.error
        import urllib.request

        secret = tmp_path / "secret.txt"
        secret.write_text("not for the web")
        for path in ("/etc/passwd", str(secret), str(predictor.model_dir / "model.safetensors")):
            for route in ("gradio_api/file=", "file="):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{route}{path}") as r:
                        body = r.read()
                except urllib.error.HTTPError as exc:
                    assert exc.code in (403, 404), (route, path, exc.code)
                else:
                    pytest.fail(f"the app served {path} ({len(body)} bytes) through /{route}")
    finally:
        demo.close()


@pytest.mark.slow
def test_export_space_serves_the_same_app(tiny_model, tmp_path):
    from gradio_client import Client, handle_file

    from marrowscope.fit.export import export_space

    out = export_space(tiny_model, tmp_path / "space", examples=[_save(tmp_path, "ex.png")])
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\n") and "sdk: gradio" in readme and "app_file: app.py" in readme
    assert {"app.py", "requirements.txt", "model", "marrowscope"} <= {p.name for p in out.iterdir()}
    port = _free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "PYTHONPATH": ""}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=out, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                time.sleep(1)
        top, _, _ = client.predict(handle_file(_save(tmp_path, "a.png")), 0, api_name="/classify")
        assert len(top["confidences"]) == 3
    finally:
        proc.kill()


def test_review_keeps_two_uploads_of_the_same_name_apart(predictor, tmp_path):
    """Microscope exports often share a name (u1/cell.png, u2/cell.png): each keeps its own bytes."""
    import csv
    import hashlib

    paths = []
    for k, sub in enumerate(("u1", "u2")):
        (tmp_path / sub).mkdir()
        paths.append(_save(tmp_path / sub, "cell.png", synthetic_cell(k + 1, k)))
    *_, review, state = batch(predictor, paths)
    review[0][3], review[1][3] = "EOS", "BLA"
    files, _ = review_export(list(CLASSES), review, state)
    with open(files[1], newline="") as fh:
        rows = {r["label"]: r for r in csv.DictReader(fh)}
    want = {lab: hashlib.sha256(Path(p).read_bytes()).hexdigest() for lab, p in zip(("EOS", "BLA"), paths)}
    assert want["EOS"] != want["BLA"]
    assert {lab: rows[lab]["sha256"] for lab in want} == want
    tree = Path(files[1]).parent
    assert {lab: hashlib.sha256((tree / rows[lab]["path"]).read_bytes()).hexdigest() for lab in want} == want


def test_app_owns_its_disk(predictor):
    from marrowscope.apps.app import CACHE_SWEEP, STATE_TTL_S

    demo = build_demo(predictor)
    assert demo.delete_cache == CACHE_SWEEP
    states = [b for b in demo.blocks.values() if isinstance(b, gr.State)]
    assert states and all(s.time_to_live == STATE_TTL_S and s.delete_callback is not None for s in states)


def test_batch_fills_as_it_goes_and_a_cancel_keeps_the_finished_cells(predictor, tmp_path):
    """The Batch view's steps: after every few images the table, counts and CSVs of the cells finished so
    far; a batch cancelled there (the generator closed, as Gradio's Cancel does) keeps them on disk."""
    import csv

    from marrowscope.apps.app import batch_steps

    images = [_save(tmp_path, f"c{k}.png", synthetic_cell(k % 7, 40 + k)) for k in range(5)]
    steps = batch_steps(predictor, images, every=2)
    rows, counts, _, _, downloads, note, review, state = next(steps)
    assert len(rows) == 2 and len(review) == 2 and len(state["cells"]) == 2
    assert "2 of 5 images so far" in note and "Cancel keeps" in note
    steps.close()  # cancelled
    with open(downloads[0], newline="") as fh:
        assert [r["file"] for r in csv.DictReader(fh)] == ["c0.png", "c1.png"]
    assert sum(c[1] for c in counts) == 2
    *_, last = batch_steps(predictor, images, state, every=2)
    assert len(last[0]) == 5 and "so far" not in last[5]


def test_the_model_view_shows_the_card_without_its_hub_metadata(tiny_model, tmp_path):
    import shutil

    model = shutil.copytree(tiny_model, tmp_path / "m")
    (model / "MODEL_CARD.md").write_text("---\nlibrary_name: timm\nlicense: apache-2.0\n---\n\n# A card\n\nText.\n")
    card = model_views(model)["card"]
    assert card.startswith("# A card") and "library_name" not in card


def test_classify_answers_before_the_grad_cam_network_has_loaded(predictor, tiny_model, tmp_path):
    """Just after start-up the Grad-CAM network is still loading: the call and advice come at once, then
    the map; once it has loaded, one answer with the map."""
    from marrowscope.apps.app import classify_steps
    from marrowscope.apps.app_models import LoadingExplainer

    loading = LoadingExplainer(tiny_model)
    image = _save(tmp_path, "a.png")
    steps = classify_steps(predictor, loading, image)
    top, overlay, advice = next(steps)
    assert overlay is None and "map follows" in advice and len(top) == 3
    loading.start()
    top2, overlay, advice = next(steps)  # waits for the network
    assert top2 == top and overlay.size == (32, 32) and "map follows" not in advice
    assert [x[1] is not None for x in classify_steps(predictor, loading, image)] == [True]  # ready: one answer
    broken = LoadingExplainer(tmp_path / "no-model").start()
    with pytest.raises(gr.Error, match="Grad-CAM map cannot be drawn"):
        list(classify_steps(predictor, broken, image))
