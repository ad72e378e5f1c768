"""The model card says what is loaded: name, backbone, where the weights came from, what it was trained
on, whether its grounding is taught; for the embedded models their colours, shapes and the words
their tokenizer knows (from the palette and the tokenizer the scenes and the model were made with)."""

import json
from pathlib import Path

import pytest

from refam.card import SUPERVISED, ZERO_SHOT, model_card
from refam.embedded import palette
from refam.extractors.flux import FluxExtractor
from refam.pipeline import RefAMPipeline
from refam.segmenters.floodfill import FloodFillSegmenter


@pytest.fixture(scope="module")
def model():
    from refam import RefAM

    return RefAM.load()


def test_the_embedded_image_models_card(model):
    from refam.shapes.model import shapes_vocabulary

    card = model.card
    assert card.name == "refam-shapes"
    assert card.extractor == "refam.extractors.flux.FluxExtractor" and card.transformer == "FluxTransformer2DModel"
    assert card.segmenter == "refam.segmenters.floodfill.FloodFillSegmenter"
    assert card.weights == "shipped in the refam package (embedded:refam-shapes)"
    assert card.grounding == SUPERVISED and card.grounding.startswith("supervised")
    assert card.trained_on.startswith("8000 procedural scenes of coloured shapes (varied family of refam.shapes); "
                                      "3000 flow-matching steps of 16 scenes plus a grounding loss (weight 1)")
    assert card.colours == list(palette.COLOURS) and card.shapes == list(palette.SHAPES)
    assert card.sizes == list(palette.SIZES)
    assert card.words == sorted(shapes_vocabulary())  # exactly what its tokenizer was built from
    assert set(card.colours) | set(card.shapes) <= set(card.words) and "zebra" not in card.words
    text = card.markdown()
    assert "**refam-shapes** · FluxExtractor on FluxTransformer2DModel" in text and "**supervised**" in text
    assert "colours: red, green, blue, yellow, purple, orange, black · shapes: circle, square, triangle" in text
    assert ", the," not in text  # stop words are known but not listed among the content words
    assert json.loads(json.dumps(card.to_dict())) == card.to_dict()


def test_the_embedded_video_models_card_is_read_without_loading_it(model):
    from refam.shapes.video_model import video_vocabulary

    card = model.video_card
    assert model._video is None  # not loaded for its card
    assert card.name == "refam-shapes-video" and card.transformer == "MochiTransformer3DModel"
    assert card.extractor == "refam.extractors.mochi.MochiExtractor" and card.grounding == SUPERVISED
    # 1000 (the first run's step-1000 snapshot) + 2000 resumed + 2000 started from that: the chain the record holds
    assert card.trained_on.startswith("800 clips of moving coloured shapes (refam.shapes); 7500 flow-matching steps")
    assert card.words == sorted(video_vocabulary()) and "moving" in card.words
    assert model.for_video().video_card is None  # a video model runs its own videos


def test_the_scenes_are_drawn_from_the_palette_the_card_names():
    from refam.shapes import scenes

    assert scenes.COLOURS is palette.COLOURS and scenes.SHAPES is palette.SHAPES and scenes.SIZES is palette.SIZES


def pipeline_of(pretrained: str) -> RefAMPipeline:
    return RefAMPipeline(FluxExtractor(pretrained), FloodFillSegmenter())


def test_a_hub_model_points_to_its_own_card_and_is_zero_shot():
    card = model_card(pipeline_of("black-forest-labs/FLUX.1-dev"))  # not loaded: nothing is downloaded
    assert card.name == "black-forest-labs/FLUX.1-dev" and card.grounding == ZERO_SHOT
    assert card.card == "https://huggingface.co/black-forest-labs/FLUX.1-dev" and card.trained_on == "see its model card"
    assert card.colours == card.words == [] and "colours" not in card.markdown()


def test_a_folder_names_its_denoiser_and_its_readme(tmp_path):
    folder = tmp_path / "my-flux"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline",
                                                         "transformer": ["diffusers", "FluxTransformer2DModel"]}))
    card = model_card(pipeline_of(str(folder)))
    assert (card.name, card.transformer, card.weights) == ("my-flux", "FluxTransformer2DModel", f"the folder {folder}")
    assert card.trained_on == "not recorded in its folder" and card.card is None
    (folder / "README.md").write_text("# my FLUX\n")
    card = model_card(pipeline_of(str(folder)))
    assert card.card == str(folder / "README.md") and card.trained_on == "see its model card"


def test_the_serve_session_gives_both_cards_as_data_and_markdown(model, tmp_path):
    from refam.apps.serve.session import Session
    from refam.sections import model_section

    session = Session(model, model_section(None), workdir=tmp_path)
    assert session.card == model.card.to_dict() | {"video_model": model.video_card.to_dict()}
    assert session.card_markdown == model.card.markdown() + "\n\n" + model.video_card.markdown()
