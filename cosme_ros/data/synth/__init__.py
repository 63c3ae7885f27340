"""A procedural driving world with exact labels and genuinely novel anomalies.

Forward-facing street scenes in perspective — road with lane markings, kerbs and sidewalks,
buildings with windows, vegetation and hedges, terrain, poles, traffic signs, sky, cars, trucks,
buses and pedestrians — each pixel labelled with its Cityscapes trainId (poles thinner than
1.5 pixels are void: too thin to label at the image's resolution). The test split adds
anomalies of families never drawn in train or val. Hard in-distribution cases (odd colours of known
classes, dusk, colour casts, cast shadows, wet roads) appear in every split.

Entry points: :func:`render_frame` (one seeded frame), :func:`write_split` (a split on disk, the
``synthetic`` dataset layout), :func:`drive_frames` (a continuous drive; written as a rosbag by
:mod:`cosme_ros.data.drive_bag`).

Modules: ``camera`` (projection), ``canvas`` (drawing primitives), ``world`` (street layout),
``solids`` (boxes), ``things`` (vehicles, people, furniture), ``anomalies`` (anomaly families),
``look`` (colours, light, compositing), ``scene`` (one render), ``frame`` (seeded frames),
``drive`` (a continuous drive), ``dataset`` (writing a split), ``preview`` (contact sheets).
"""

from cosme_ros.data.synth.anomalies import FAMILIES as ANOMALY_FAMILIES
from cosme_ros.data.synth.dataset import write_split
from cosme_ros.data.synth.drive import drive_frames
from cosme_ros.data.synth.frame import GENERATOR_VERSION, SPLITS, Frame, render_frame

__all__ = [
    "ANOMALY_FAMILIES",
    "GENERATOR_VERSION",
    "SPLITS",
    "Frame",
    "drive_frames",
    "render_frame",
    "write_split",
]
