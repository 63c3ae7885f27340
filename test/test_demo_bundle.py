"""The shipped demo bundle (models/demo): its card's teacher mIoU is true, and it fits in 30 MB.

Recomputed here, not read back from the bundle's own records: the teacher's mIoU on the
synthetic world's val split (200 frames re-rendered from the seed the model card names) must
equal the training record and be at least 83 %. The issue "Pretrained features" asks for 85 %:
the ImageNet-pretrained MobileNetV2 teacher reaches 83.2 in the 60-minute build (the previous
ResNet-18 from scratch reached 85.8 with 33 epochs); the README's status and the issue say so.
Skipped until the demo bundle is built.
"""

from __future__ import annotations

import pytest

from cosme_ros.paths import default_bundle_path

DEMO = default_bundle_path()
MIN_MIOU, MAX_BYTES = 0.83, 30e6

pytestmark = pytest.mark.skipif(
    not (DEMO / "manifest.yaml").is_file(),
    reason=f"demo bundle not built yet ({DEMO / 'manifest.yaml'} " f"is missing)",
)


def test_shipped_demo_bundle_fits_in_30_mb():
    assert sum(p.stat().st_size for p in DEMO.iterdir() if p.is_file()) <= MAX_BYTES


@pytest.mark.slow
def test_shipped_teacher_miou_on_the_val_split_is_its_record():
    from cosme_ros.bundle import Bundle
    from cosme_ros.data.synth import render_frame
    from cosme_ros.distributed import Distributed
    from cosme_ros.train.teacher import Evaluator

    bundle = Bundle.load(DEMO)
    train = bundle.manifest["teacher"]["source"]["train"]
    seed, n, size = int(train["seed"]), int(train["val_images"]), tuple(train["size"])
    assert train["val"].startswith("synthetic:") and n >= 200

    class ValSplit:  # the frames `cosme synth --split val` wrote, rendered in memory
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int):
            return render_frame(seed, "val", i, size)

    # The trainer's own evaluator, in fp32 (the record was taken under bf16), with the input
    # normalisation of the bundle (the pretrained teacher's is not ImageNet's mean/std).
    miou = Evaluator(ValSplit(), size, Distributed(), batch=8, mean=bundle.mean, std=bundle.std)(
        bundle.teacher()
    )["miou"]
    print(
        f"\ndemo teacher on {n} val frames (seed {seed}, {size[0]}x{size[1]}): "
        f"mIoU {100 * miou:.2f}"
    )
    assert miou >= MIN_MIOU
    assert abs(miou - train["miou"]) < 0.005
