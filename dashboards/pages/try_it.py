"""Try it: detoxify one image with a registered purifier; the registered victim's prediction before and after."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

from dashboards import dvc_meta, store, tryit, ui

# the guard (pyfunc: purifier + classifier) can serve as either
VICTIMS = ("detoxops-victim", "detoxops-clean-model", "detoxops-guard")
PURIFIERS = ("detoxops-purifier", "detoxops-guard")

st.title("Try it")
st.caption("Upload an image or pick one, choose a registered victim classifier and diffusion purifier: SampDetox "
           "(the platform's default profile) detoxifies the image and the victim classifies it before and after.")

uri = ui.tracking_uri()
settings = ui.settings()
try:
    models = store.registered_models(uri)
except store.StoreUnavailable as exc:
    ui.show_unavailable(exc)
    st.stop()
victims = models[models["name"].isin(VICTIMS)]
purifiers = models[models["name"].isin(PURIFIERS)]
if victims.empty or purifiers.empty:
    ui.no_runs("registered victim and purifier",
               "Run the main job (`make demo`); it registers `detoxops-victim` and `detoxops-purifier`.")
    st.stop()


def version_choices(rows) -> dict[tuple[str, int], str]:
    """(name, version) → "name vN @alias" for a selectbox."""
    return {(r.name, int(r.version)): f"{r.name} v{r.version}" + (f" @{r.aliases}" if r.aliases else "")
            for r in rows.itertuples()}


victim_choices, purifier_choices = version_choices(victims), version_choices(purifiers)
c1, c2 = st.columns(2)
victim_name, victim_version = c1.selectbox("Victim classifier", list(victim_choices), format_func=victim_choices.get,
                                           key="try_victim")
purifier_name, purifier_version = c2.selectbox("Purifier", list(purifier_choices), format_func=purifier_choices.get,
                                               key="try_purifier")


@st.cache_resource(show_spinner=False, max_entries=4)
def load_model(uri: str, name: str, version: int, kind: str):
    folder = Path(tempfile.mkdtemp(prefix=f"detoxops-{kind}-"))
    local = store.download_model_version(uri, name, version, folder)
    return tryit.load_victim(local) if kind == "victim" else tryit.load_purifier(local)


# ------------------------------------------------------------------------------------------- the image
source = st.radio("Image", ["Upload", "From a dataset version", "Poisoned sample from a run"], horizontal=True,
                  key="try_source")
image, true_label, class_names = None, None, None
if source == "Upload":
    upload = st.file_uploader("PNG or JPEG", type=["png", "jpg", "jpeg"], key="try_upload")
    if upload is not None:
        image = upload.getvalue()
elif source == "From a dataset version":
    versions = dvc_meta.dataset_versions(settings.data_root, settings.project_root)
    if versions.empty:
        ui.no_runs("dataset versions", f"Ingest one with `detoxops data ingest` (under `{settings.data_root}`).")
    else:
        path = st.selectbox("Dataset version", list(versions.path),
                            format_func=lambda p: f"{Path(p).parent.name}/{Path(p).name}", key="try_version")
        from detoxops.data import ImageSet

        split_dir = next((Path(path) / s for s in ("test", "train") if (Path(path) / s).is_dir()), None)
        if split_dir is None:
            st.warning(f"{path} has no test/ or train/ split.")
        else:
            data = ImageSet.load(split_dir, mmap=True)
            idx = st.number_input(f"Index in {split_dir.name} (0–{len(data) - 1})", 0, len(data) - 1, 0, key="try_idx")
            image, true_label, class_names = np.array(data.images[idx]), int(data.labels[idx]), data.class_names
else:
    runs = ui.load_runs()
    with_samples = store.runs_with_artifact(uri, runs, "samples/samples.npz")
    if with_samples.empty:
        ui.no_runs("sample archives", "Defense runs store `samples/samples.npz`; run `make demo`.")
    else:
        labels = {row.run_id: f"{row.attack or '?'} · {ui.run_label(row)}" for _, row in with_samples.iterrows()}
        rid = st.selectbox("Run", list(labels), format_func=labels.get, key="try_run")
        arrays = store.artifact_npz(uri, rid, "samples/samples.npz")
        if "poisoned" not in arrays:
            st.warning("This run's archive holds no `poisoned` images.")
        else:
            idx = st.number_input(f"Sample (0–{len(arrays['poisoned']) - 1})", 0, len(arrays["poisoned"]) - 1, 0,
                                  key="try_sample")
            image = arrays["poisoned"][idx]
            if "labels" in arrays:
                true_label = int(arrays["labels"][idx])

if image is None:
    st.info("Choose an image to detoxify.", icon=":material/image:")
    st.stop()

cfg = tryit.sampdetox_config()
fast = st.toggle(f"Fast preview: DDIM sampling, stride {cfg.ddim_stride}", value=cfg.sampler == "ddim",
                 key="try_fast", help=f"Profile `{cfg.profile}` from params.yaml either way; DDPM walks every noise "
                 "level (hundreds of network calls), DDIM every stride-th.")
cfg = cfg.model_copy(update={"sampler": "ddim" if fast else "ddpm"})

if not st.button("Detoxify", type="primary", key="try_run_button"):
    if not isinstance(image, bytes):
        st.image(ui.as_display(image, 192), caption="input", width="content")
    st.stop()

# --------------------------------------------------------------------------------------- the computation
failure = None
with st.status("Detoxifying…", expanded=True) as status:
    progress = st.progress(0, text="Loading the victim classifier")
    try:
        victim = load_model(uri, victim_name, victim_version, "victim")
        progress.progress(25, text="Loading the purifier")
        purifier = load_model(uri, purifier_name, purifier_version, "purifier")
        progress.progress(50, text="Preparing the image")
        size = tryit.input_size(purifier)
        pixels = tryit.read_image(image, size) if isinstance(image, bytes) else np.asarray(image, dtype=np.uint8)
        if size is not None and pixels.shape[:2] != (size, size):
            raise ValueError(f"the image is {pixels.shape[1]}x{pixels.shape[0]}, the purifier expects {size}x{size}")
        progress.progress(60, text=f"SampDetox ({cfg.profile}, {cfg.sampler}): global then local denoising")
        result = tryit.detoxify_one(pixels, victim, purifier, cfg)
        progress.progress(100, text="Done")
        status.update(label=f"Detoxified in {result.seconds:.1f} s", state="complete", expanded=False)
    except (store.StoreUnavailable, ValueError, FileNotFoundError, ImportError) as exc:
        status.update(label="Could not detoxify this image", state="error", expanded=False)
        failure = exc
if failure is not None:
    st.error(f"{type(failure).__name__}: {failure}", icon=":material/error:")
    st.info("Check that the chosen versions were registered by the platform's tasks (they store the "
            "safetensors folders `detoxops.models.save_classifier` / `detoxops.diffusion.save_purifier` write).",
            icon=":material/info:")
    st.stop()


def name_of(label: int | None) -> str:
    if label is None:
        return "?"
    return f"{label} ({class_names[label]})" if class_names and 0 <= label < len(class_names) else str(label)


cols = st.columns(3)
cols[0].image(ui.as_display(result.original, 192), caption="input", width="content")
if result.trigger_map is not None:
    cols[1].image(ui.as_display(result.trigger_map, 192), caption="trigger map (white = likely trigger)",
                  width="content")
cols[2].image(ui.as_display(result.detoxified, 192), caption="detoxified", width="content")
m1, m2, m3 = st.columns(3)
m1.metric("Prediction before", name_of(result.pred_before))
m2.metric("Prediction after", name_of(result.pred_after))
m3.metric("True label", name_of(true_label))
st.caption(("The detoxified image changed the prediction." if result.pred_after != result.pred_before
            else "Same prediction before and after.") + f" SampDetox profile `{cfg.profile}`, sampler `{cfg.sampler}`.")
