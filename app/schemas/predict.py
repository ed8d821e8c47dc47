"""What the predict routes take (28x28 pixel arrays, which model) and answer (classes and probabilities).

Sizes come from the network (``models.lenet``: ``IMAGE_SIZE``, ``MAX_CLASSES``); class names
come from each model's checkpoint (its ``classes``), so the schema names Fashion-MNIST's only
as the example.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from app.schemas.common import EXAMPLE_ID
from models.data import CLASS_NAMES
from models.lenet import IMAGE_SIZE, MAX_CLASSES
from models.runtime import Runtime

__all__ = [
    "MODEL_ID_DESCRIPTION",
    "TOP_K_DEFAULT",
    "ClassScore",
    "PredictBatchOut",
    "PredictBatchRequest",
    "PredictOut",
    "PredictRequest",
]

_SIZE = f"{IMAGE_SIZE}x{IMAGE_SIZE}"
Pixel = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
PixelRow = Annotated[list[Pixel], Field(min_length=IMAGE_SIZE, max_length=IMAGE_SIZE)]
Pixels = Annotated[
    list[PixelRow],
    Field(min_length=IMAGE_SIZE, max_length=IMAGE_SIZE,
          description=f"{IMAGE_SIZE} rows of {IMAGE_SIZE} numbers in [0, 1] (pixel / 255, 0 is black)"),
]
_ZEROS: JsonValue = [[0] * IMAGE_SIZE] * IMAGE_SIZE  # the smallest valid image to show in /docs
MODEL_ID_DESCRIPTION = ("a model id or alias; default: the model the alias DEFAULT_MODEL_ALIAS (`production`) "
                        "points at, else the newest")
# Empty is not a name: omit the field (or send null) for the default model.
ModelName = Annotated[str | None, Field(min_length=1, description=MODEL_ID_DESCRIPTION)]
TOP_K_DEFAULT = 3


class PredictRequest(BaseModel):
    """A 28x28 grayscale image as numbers in [0, 1] (pixel / 255), and optionally which model."""

    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra={"examples": [{"pixels": _ZEROS}]},
    )

    pixels: Pixels
    model_id: ModelName = None


class PredictBatchRequest(BaseModel):
    """Up to MAX_PREDICT_BATCH (256 by default) 28x28 images, answered in order by one forward pass."""

    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra={"examples": [{"images": [_ZEROS]}]},
    )

    images: list[Pixels] = Field(min_length=1, description=f"each {IMAGE_SIZE} rows of {IMAGE_SIZE} numbers in "
                                 "[0, 1]; at most MAX_PREDICT_BATCH (413 beyond)")
    model_id: ModelName = None


_CLASS_NAME = ("the class's name, from the model's checkpoint (its `classes`; Fashion-MNIST's are "
               f"{', '.join(CLASS_NAMES)})")


class ClassScore(BaseModel):
    """One class and the probability the model gives it."""

    class_index: int = Field(ge=0, le=MAX_CLASSES - 1)
    class_name: str = Field(description=_CLASS_NAME)
    probability: float = Field(ge=0.0, le=1.0)


_EXAMPLE_PROBABILITIES: list[JsonValue] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.01, 0.0, 0.02, 0.0, 0.97]


class PredictOut(BaseModel):
    """The model's answer for one image: the top class, every class's probability, the top k."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={"examples": [{
            "model_id": EXAMPLE_ID, "class_index": 9, "class_name": "Ankle boot", "probability": 0.97,
            "scores": dict(zip(CLASS_NAMES, _EXAMPLE_PROBABILITIES, strict=True)),
            "top_k": [{"class_index": 9, "class_name": "Ankle boot", "probability": 0.97},
                      {"class_index": 7, "class_name": "Sneaker", "probability": 0.02},
                      {"class_index": 5, "class_name": "Sandal", "probability": 0.01}],
            "probabilities": _EXAMPLE_PROBABILITIES,
            "bn_mode": "eval", "runtime": "onnxruntime",
        }]},
    )

    model_id: str
    class_index: int = Field(ge=0, le=MAX_CLASSES - 1, description="the most probable class")
    class_name: str = Field(description="its name: " + _CLASS_NAME)
    probability: float = Field(ge=0.0, le=1.0, description="its probability")
    scores: dict[str, float] = Field(description="every class's probability, keyed by class name")
    top_k: list[ClassScore] = Field(description="the k most probable classes, most probable first (?top_k=)")
    probabilities: list[float] = Field(min_length=2, max_length=MAX_CLASSES,
                                       description="every class's probability in class order (as scores); "
                                       "one per class of the model")
    bn_mode: Literal["eval"] = Field("eval", description="always eval: BN uses its running statistics")
    runtime: Runtime = Field(description="what computed the answer: PREDICT_RUNTIME, or eager PyTorch while a "
                             "model's onnxruntime session is being built (or if it cannot be)")


class PredictBatchOut(BaseModel):
    """One answer per image, in the order sent."""

    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    data: list[PredictOut]
    count: int
