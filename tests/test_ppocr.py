"""Real trained models from another framework: the PP-OCR detector, direction classifier and recogniser
that ship inside the rapidocr-onnxruntime wheel (Paddle exports, opsets 11-12, dynamic and -1 dims,
run-time shape arithmetic, HardSigmoid/HardSwish, ConvTranspose decoders).

Each goes through inspect and optimize (default, fp16, int8), and rapidocr's own OCR pipeline runs
end to end on images rendered here with PIL: with the original models and with deploykit's. Default
and fp16 must read exactly the same text; int8's line agreement is measured and reported as it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

rapidocr = pytest.importorskip("rapidocr_onnxruntime", reason="rapidocr-onnxruntime is in the test extra")

from deploykit import inspect_model  # noqa: E402
from deploykit.optimize import optimize_model  # noqa: E402

MODELS = Path(rapidocr.__file__).parent / "models"
DET, CLS, REC = (MODELS / "ch_PP-OCRv4_det_infer.onnx", MODELS / "ch_ppocr_mobile_v2.0_cls_infer.onnx",
                 MODELS / "ch_PP-OCRv4_rec_infer.onnx")
SHAPES = {"det": (1, 3, 320, 640), "cls": (1, 3, 48, 192), "rec": (1, 3, 48, 320)}
LINES = ["deploykit proves every step", "Invoice 2026-11-21 total 418.75", "The quick brown fox jumps",
         "ONNX Runtime 1.31 on the CPU", "Shipment 7731 arrives Monday", "Call 555-0142 before noon"]


def render(lines, width=780):
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=32)
    image = Image.new("RGB", (width, 60 * len(lines) + 40), "white")
    draw = ImageDraw.Draw(image)
    for i, text in enumerate(lines):
        draw.text((20, 20 + 60 * i), text, fill="black", font=font)
    return np.asarray(image)


def _normalized(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """What rapidocr feeds its models: RGB resized, scaled to [-1, 1], CHW."""
    from PIL import Image

    resized = np.asarray(Image.fromarray(image).resize((width, height)), dtype=np.float32) / 255.0
    return ((resized - 0.5) / 0.5).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Calibration/validation sets from rendered text, at each model's input size."""
    root = tmp_path_factory.mktemp("ppocr")
    rng = np.random.default_rng(0)
    pages = [render(rng.permutation(LINES)[:3].tolist()) for _ in range(6)]
    strips = [render([line], width=40 + 20 * len(line)) for line in LINES]
    files = {}
    for kind, images in (("det", pages), ("cls", strips), ("rec", strips)):
        _, _, h, w = SHAPES[kind]
        files[kind] = root / f"{kind}.npy"
        np.save(files[kind], np.stack([_normalized(im, h, w) for im in images]))
    return root, files


@pytest.fixture(scope="module")
def optimized(samples):
    root, files = samples
    out = {}
    for kind, source in (("det", DET), ("cls", CLS), ("rec", REC)):
        for variant, options in (("default", {}), ("fp16", {"fp16": True}),
                                 ("int8", {"int8": True, "calibration": str(files[kind])})):
            path = root / f"{kind}_{variant}.onnx"
            report = optimize_model(source, path, input_shape=SHAPES[kind], validate=str(files[kind]), **options)
            out[(kind, variant)] = (path, report)
    return out


def _read(det, cls, rec, image):
    return _reader(det, cls, rec)(image)


def _reader(det, cls, rec):
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR(det_model_path=str(det), cls_model_path=str(cls), rec_model_path=str(rec))
    return lambda image: [line[1] for line in engine(image)[0] or []]


def held_out_pages(count: int, seed: int = 7):
    """Five-line pages of varied width, none of them in the calibration/validation sets."""
    rng = np.random.default_rng(seed)
    return [render(rng.permutation(LINES)[:5].tolist(), width=int(rng.integers(700, 900))) for _ in range(count)]


def line_agreement(models: dict, pages, originals) -> tuple[int, int, int]:
    """(lines identical, lines identical once whitespace is removed, lines) of rapidocr with `models`
    ({'det': path, 'cls': ..., 'rec': ...}) against the float pipeline's `originals` on `pages`."""
    return agreement_of(_reader(models["det"], models["cls"], models["rec"]), pages, originals)


def agreement_of(read, pages, originals) -> tuple[int, int, int]:
    """line_agreement for any reader: `read(page)` -> the page's lines."""
    same = same_words = total = 0
    for page, original in zip(pages, originals):
        got = read(page)
        total += len(original)
        if len(got) == len(original):
            same += sum(a == b for a, b in zip(got, original))
            same_words += sum("".join(a.split()) == "".join(b.split()) for a, b in zip(got, original))
    return same, same_words, total


@pytest.mark.parametrize("kind,model", [("det", DET), ("cls", CLS), ("rec", REC)])
def test_inspect_reads_the_paddle_exports(kind, model):
    report = inspect_model(model, SHAPES[kind])
    assert report.totals.params > 100_000 and report.totals.macs > 10_000_000
    assert report.input_shapes == {"x": list(SHAPES[kind])}


def test_every_pass_runs_and_reports_on_real_data(optimized):
    for (kind, variant), (path, report) in optimized.items():
        assert path.exists(), (kind, variant)
        assert "validation data" in report.validation_data
        last = report.passes[-1]
        if variant == "default":
            # Exact passes stay within max(1e-4, twice ORT's own optimised-vs-unoptimised difference on
            # this data); the detector's noise floor on real text is about 1.2e-4.
            assert report.noise_floor > 0 and report.exact_limit == max(1e-4, 2 * report.noise_floor)
            assert all(p.max_rel <= report.exact_limit for p in report.passes), (kind, report.exact_limit)
        if variant == "int8" and kind != "rec":
            assert any("upgraded the model from opset 1" in n for n in last.notes) or kind == "det"
        if kind in ("cls", "rec"):
            assert last.top1_agreement is not None


def test_ocr_pipeline_reads_the_same_text_with_deploykits_models(optimized):
    image = render(LINES[:4])
    original = _read(DET, CLS, REC, image)
    assert len(original) == 4 and "The quick brown fox jumps" in original  # the reference pipeline reads the page
    for variant in ("default", "fp16"):
        got = _read(*(optimized[(kind, variant)][0] for kind in ("det", "cls", "rec")), image)
        assert got == original, variant
    int8 = _read(*(optimized[(kind, "int8")][0] for kind in ("det", "cls", "rec")), image)
    agreement = sum(a == b for a, b in zip(int8, original)) / len(original)
    print(f"int8 PP-OCR: {agreement:.0%} of lines identical ({int8} vs {original})")
    assert int8 and 0.0 <= agreement <= 1.0


def test_int8_under_the_default_budget_model_by_model_in_rapidocr(optimized):
    """Each model's int8 (1-point budget, the default with --validate) swapped into the float pipeline."""
    image = render(LINES[:4])
    original = _read(DET, CLS, REC, image)
    floats = {"det": DET, "cls": CLS, "rec": REC}
    for kind in ("det", "cls", "rec"):
        path, report = optimized[(kind, "int8")]
        notes = " ".join(report.passes[-1].notes)
        # Every model here breaks the budget with all of it in int8: the report says which nodes stayed float.
        assert "in float to hold the budget" in notes and "kept in float, most harmful first" in notes, kind
        assert report.passes[-1].top1_agreement >= 0.99, kind
        got = _read(*(path if k == kind else floats[k] for k in ("det", "cls", "rec")), image)
        same = sum(a == b for a, b in zip(got, original))
        print(f"int8 {kind} under the budget: {same} of {len(original)} lines identical ({got})")
        if kind == "cls":  # the direction classifier's decisions are what the budget holds: lines are identical
            assert got == original


def test_detector_int8_under_the_budget_on_held_out_pages(optimized):
    """The budgeted int8 detector on 8 pages it never saw, in rapidocr with the float classifier and recogniser.

    Its map keeps the budget beyond the validation pages (plain int8 loses a third of the foreground
    IoU on such pages) and the text read stays the same. Lines identical character for character are
    measured and printed, with the fp16 detector as the control: this recogniser's spaces follow the
    crop's exact size, and a box one pixel taller, which fp16 moves too, adds or drops a space
    (on 100 such lines fp16 kept 86% identical, budgeted int8 67-77%; bench/REALMODELS.md).
    """
    import onnxruntime as ort

    pages = held_out_pages(8)
    originals = [_read(DET, CLS, REC, page) for page in pages]
    assert sum(map(len, originals)) == 40  # the float pipeline finds every line
    budgeted, _ = optimized[("det", "int8")]

    x = np.stack([_normalized(page, *SHAPES["det"][2:]) for page in pages])
    maps = {}
    for name, path in (("float", DET), ("int8", budgeted)):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        maps[name] = np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))]) > 0.5
    iou = np.sum(maps["float"] & maps["int8"]) / np.sum(maps["float"] | maps["int8"])
    assert iou >= 0.97, iou  # 1 point on the validation pages; 98.4% on these here, plain int8 about 64%

    floats = {"det": DET, "cls": CLS, "rec": REC}
    same, same_words, total = line_agreement({**floats, "det": budgeted}, pages, originals)
    control, control_words, _ = line_agreement({**floats, "det": optimized[("det", "fp16")][0]}, pages, originals)
    print(f"int8 det under the budget on {len(pages)} held-out pages: foreground IoU {iou:.2%}; {same}/{total} lines "
          f"identical, {same_words}/{total} up to whitespace (fp16 detector: {control}/{total}, {control_words}/{total})")
    assert same_words / total >= 0.98


def test_recipe_fast_holds_the_budget_on_the_classifier(samples, tmp_path):
    """The stacked recipe on a real trained model: its top-1 agreement with the source, measured here."""
    from deploykit import Engine

    _, files = samples
    out = tmp_path / "cls_fast.onnx"
    report = optimize_model(CLS, out, input_shape=SHAPES["cls"], recipe="fast", calibration=str(files["cls"]),
                            validate=str(files["cls"]))
    assert report.recipe["name"] == "fast" and report.recipe["drop"] <= 1.0
    x = np.load(files["cls"])
    reference = Engine(CLS)(x).argmax(1)
    assert np.array_equal(Engine(out)(x).argmax(1), reference)
    # The budget is judged in ONNX Runtime. OpenVINO's int8 kernels round differently: on these strips
    # it flipped one of six (README, "What deploykit still cannot take"); measured, not asserted equal.
    flipped = int(np.sum(Engine(out, providers="openvino")(x).argmax(1) != reference))
    print(f"recipe fast, PP-OCR classifier in OpenVINO: {flipped} of {len(x)} strips flipped")


def test_histogram_calibration_runs_on_the_detector_and_json_stays_clean(samples, cli, tmp_path):
    """The detector's Paddle export has Constant nodes ORT's histogram calibrators used to fail on
    ('zero-size array to reduction operation'); they also print progress, which must stay off --json's stdout."""
    import json

    _, files = samples
    out = tmp_path / "det_percentile.onnx"
    result = cli("optimize", DET, "-o", out, "--int8", "--calibration", files["det"], "--calibration-method",
                 "percentile", "--input-shape", ",".join(map(str, SHAPES["det"])), "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)  # stdout is the JSON document alone
    int8 = report["passes"][-1]
    assert int8["name"] == "int8" and any("percentile" in n for n in int8["notes"])
