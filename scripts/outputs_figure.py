"""Render what the Slicer module shows for one T1w/T2w pair into a PNG, from the output nodes.

The pair is read into real MRML nodes by Slicer's storage node (``slicer-core``), analysed with a
model bundle as the module's Apply does with "Prepare raw scans" off (``analyse_nodes``; the
cohort's scans are skull-stripped and on the template's grid already), and every panel is drawn from
the resulting volume and table nodes: inputs; reconstructions and cross-view images; error maps;
the content maps (spatial family) and the content dimensions of both views. Axial slices through the
input T1w's brain centre, in RAS millimetres, radiological convention (patient right on the left) as
in Slicer's slice views. With ``--labels`` (the subject's tissue labels, e.g. the synthetic cohort's
``derivatives/tissues``) a last row shows its lesions, outlined, through the slice that holds most of
them: the T2w, both cross-view images, and the content map's channel that is most present in the
lesions against the white matter around them.

    python scripts/outputs_figure.py --t1 T1.nii.gz --t2 T2.nii.gz [--labels dseg.nii.gz]
        [--out Resources/Screenshots/outputs.png]
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np

from MultiviewCRLLib.config import VIEWS

ROOT = Path(__file__).resolve().parents[1]


def ras_volume(node) -> tuple[np.ndarray, np.ndarray]:
    """The node's [i, j, k] array reoriented to the closest RAS axes, and its affine."""
    from MultiviewCRLLib.slicer_nodes import array_affine_from_node

    return canonical(*array_affine_from_node(node))


def canonical(array, affine) -> tuple[np.ndarray, np.ndarray]:
    """An [i, j, k] array and its affine reoriented to the closest RAS axes."""
    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.asarray(affine)))
    return np.asarray(image.dataobj), image.affine


def axial_plane(array: np.ndarray, affine: np.ndarray, z_mm: float) -> tuple[np.ndarray, tuple]:
    """The RAS-ordered volume's axial slice nearest to ``z_mm`` and its extent in millimetres,
    radiological (patient right on the left)."""
    k = int(np.clip(round((z_mm - affine[2, 3]) / affine[2, 2]), 0, array.shape[2] - 1))
    x0, y0 = affine[0, 3], affine[1, 3]
    x1, y1 = x0 + affine[0, 0] * array.shape[0], y0 + affine[1, 1] * array.shape[1]
    return array[:, :, k].T, (x1, x0, y0, y1)  # rows: posterior -> anterior


def draw_plane(ax, array, affine, z_mm: float, title: str, cmap: str = "gray", vmax: float | None = None) -> None:
    """The RAS-ordered volume's axial slice nearest to ``z_mm`` (RAS), drawn in millimetres."""
    plane, extent = axial_plane(array, affine, z_mm)
    low, high = np.percentile(plane, [1, 99]) if vmax is None else (0, vmax)
    ax.imshow(plane, cmap=cmap, origin="lower", extent=extent, vmin=low, vmax=high)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def draw_axial(ax, node, z_mm: float, title: str, cmap: str = "gray", vmax: float | None = None) -> None:
    """The node's axial slice nearest to ``z_mm`` (RAS), drawn in millimetres."""
    draw_plane(ax, *ras_volume(node), z_mm, title, cmap, vmax)


def outline(ax, mask: np.ndarray, affine: np.ndarray, z_mm: float) -> None:
    """The RAS-ordered mask's outline on the axial slice nearest to ``z_mm``, in red."""
    plane, extent = axial_plane(mask, affine, z_mm)
    if plane.any():
        ax.contour(plane, levels=[0.5], origin="lower", extent=extent, colors="red", linewidths=0.8)


def draw_lesion_row(fig, grid, row: int, result: dict, labels, inputs: dict) -> None:
    """The lesions (``labels`` on the model grid), outlined over the T2w, both cross-view images and
    the T2w content map's channel whose mean weight in the lesions most exceeds its mean in white
    matter, through the axial slice with most lesion voxels."""
    from MultiviewCRLLib.training.clinical import TISSUES

    labels_array = np.asarray(labels)
    lesion, white = labels_array == TISSUES["lesion"], labels_array == TISSUES["WM"]
    ras_lesion, ras_affine = canonical(lesion, labels.affine)
    z_mm = float(ras_affine[2, 3] + ras_affine[2, 2] * ras_lesion.sum((0, 1)).argmax())
    analysis, images = result["analysis"], result["images"]
    content_map = np.asarray(analysis.content_maps["T2w"], dtype=np.float32)
    channel = int(np.argmax(content_map[:, lesion].mean(1) - content_map[:, white].mean(1)))
    panels = [
        (inputs["T2w"], f"{inputs['T2w'].GetName()}: lesions outlined ({lesion.sum()} voxels)"),
        (images["T1w→T2w"], images["T1w→T2w"].GetName()),
        (images["T2w→T1w"], images["T2w→T1w"].GetName()),
    ]
    for column, (node, title) in enumerate(panels):
        ax = fig.add_subplot(grid[row, column])
        draw_axial(ax, node, z_mm, title)
        outline(ax, ras_lesion, ras_affine, z_mm)
    ax = fig.add_subplot(grid[row, 3])
    channel_map = canonical(content_map[channel], analysis.content_maps["T2w"].affine)
    draw_plane(ax, *channel_map, z_mm, f"T2w map channel {channel + 1}", "viridis", 1.0)
    outline(ax, ras_lesion, ras_affine, z_mm)


def render(result: dict, inputs: dict, content_dim: int, out: Path, labels=None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import slicer.util

    array, affine = ras_volume(inputs["T1w"])
    z_mm = float((affine @ np.r_[np.argwhere(array > np.percentile(array, 75)).mean(0), 1])[2])
    # Columns by target view: T1w reconstruction, T1w from T2w's content, then the same for T2w.
    kinds = ("T1w reconstruction", "T2w→T1w", "T2w reconstruction", "T1w→T2w")
    images, errors = result["images"], result["errors"]
    analysis = result["analysis"]

    rows = [1, 1, 1, 0.8] + ([1] if labels is not None else [])
    fig = plt.figure(figsize=(13, 2.6 * sum(rows)), constrained_layout=True)
    grid = fig.add_gridspec(len(rows), 4, height_ratios=rows)
    for column, view in enumerate(VIEWS):
        draw_axial(fig.add_subplot(grid[0, column]), inputs[view], z_mm, inputs[view].GetName())
    text = fig.add_subplot(grid[0, 2:])
    text.set_axis_off()
    nearest = "\n  ".join(f"{name} ({cos:.2f})" for name, cos in analysis.nearest_cohort)
    check = analysis.check
    checked = "not calibrated" if check is None else "no warnings" if check.passed else "; ".join(check.warnings)
    text.text(
        0,
        0.5,
        "Top row: the inputs. Second row: each view reconstructed from its own\n"
        "embedding, and each view synthesised from the OTHER view's content with\n"
        "this view's style. Third row: absolute error inside the brain mask\n"
        "(z-scored units). Fourth row: the content maps (spatial models) and\n"
        "the 256 content dimensions of both views."
        + ("\nLast row: the lesions, outlined in red.\n\n" if labels is not None else "\n\n")
        + f"content cosine T1w vs T2w: {analysis.content_cosine:.4f}\n"
        f"style distance: {analysis.style_distance:.2f}\n"
        f"nearest cohort subjects (content cosine\nabout the cohort mean):\n  {nearest}\n"
        + textwrap.fill(f"input check: {checked}", 72),
        fontsize=10,
        va="center",
        family="monospace",
    )
    error_max = max(float(np.percentile(slicer.util.arrayFromVolume(node), 99.5)) for node in errors.values())
    for column, kind in enumerate(kinds):
        draw_axial(fig.add_subplot(grid[1, column]), images[kind], z_mm, images[kind].GetName())
        draw_axial(fig.add_subplot(grid[2, column]), errors[kind], z_mm, f"|error| {kind}", "magma", error_max)
    maps = result["content_maps"]  # spatial family: each view's content map, strongest channel 1..K
    for column, (view, node) in enumerate(maps.items()):
        draw_axial(fig.add_subplot(grid[3, column]), node, z_mm, f"content map of {view} (channel)", "tab10", 10)
    chart = fig.add_subplot(grid[3, len(maps) :])
    table = result["table"]
    for view in VIEWS:
        chart.plot(slicer.util.arrayFromTableColumn(table, view)[:content_dim], ".", label=view, markersize=4)
    chart.set_xlabel("content dimension")
    chart.set_ylabel("value")
    chart.set_title(result["chart"].GetTitle() + " (table node " + table.GetName() + ")", fontsize=9)
    chart.legend()
    if labels is not None:
        draw_lesion_row(fig, grid, 4, result, labels, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--t1", type=Path, required=True, help="T1w image file")
    parser.add_argument("--t2", type=Path, required=True, help="T2w image file")
    parser.add_argument("--bundle", type=Path, default=ROOT / "Resources" / "Models" / "demo", help="model bundle")
    parser.add_argument("--labels", type=Path, help="the subject's tissue labels (a row of its lesions)")
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Screenshots" / "outputs.png")
    args = parser.parse_args()

    import slicer

    from MultiviewCRLLib.runtime.bundle import load_bundle
    from MultiviewCRLLib.slicer_nodes import analyse_nodes, read_volume_node

    slicer.mrmlScene = scene = slicer.vtkMRMLScene()
    inputs = {"T1w": read_volume_node(args.t1, scene), "T2w": read_volume_node(args.t2, scene)}
    bundle = load_bundle(args.bundle)
    result = analyse_nodes(bundle, inputs["T1w"], inputs["T2w"], scene=scene, prepare=False)
    labels = None
    if args.labels:
        from MultiviewCRLLib.training.clinical import labels_on_grid

        labels = labels_on_grid(args.labels, bundle.preprocessing)
    print(f"wrote {render(result, inputs, bundle.content_dim, args.out, labels)}")


if __name__ == "__main__":
    main()
