import pytest

from cvtool.errors import UsageError
from cvtool.models.registry import get_entry, list_entries

SEED_ARCHITECTURES = [
    "alexnet", "vgg16", "resnet18", "resnet50", "googlenet", "inception_v3", "mobilenet_v2",
    "mobilenet_v3_small", "mobilenet_v3_large", *[f"efficientnet_b{i}" for i in range(8)], "lenet5",
]


def test_every_seed_architecture_is_registered_for_classification():
    names = {e.name for e in list_entries("classify")}
    assert set(SEED_ARCHITECTURES) <= names


def test_an_unknown_task_is_one_line_naming_the_known_ones_not_an_empty_list():
    from conftest import invoke_cli

    with pytest.raises(UsageError, match=r"^unknown task 'clasify'; the tasks: classify, detect, face-detect, "):
        list_entries("clasify")
    result = invoke_cli("models", "--task", "segmentation")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().startswith("cvtool: unknown task 'segmentation'; the tasks: classify, detect")


def test_torchvision_entries_carry_weights_preprocessing_and_imagenet_labels():
    entry = get_entry("mobilenet_v3_small")
    assert entry.weights.kind == "download"
    assert entry.weights.url.startswith("https://download.pytorch.org/models/mobilenet_v3_small-")
    classes = entry.classes()
    assert len(classes) == 1000 and classes[0] == "tench"
    assert entry.preprocess().crop_size == 224
    assert get_entry("inception_v3").preprocess().crop_size == 299


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_aux_head_models_build_in_the_layout_their_weights_were_published_in(name):
    model = get_entry(name).build()
    assert model.aux_logits and model.transform_input


def test_lenet5_params_match_the_registry_and_the_paper_shapes():
    import torch

    entry = get_entry("lenet5")
    model = entry.build(num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == entry.num_params
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UsageError, match="did you mean resnet18"):
        get_entry("resnet81")


def test_wrong_task_is_a_usage_error():
    with pytest.raises(UsageError, match="is a classify model, not a segment model"):
        get_entry("resnet18", task="segment")
