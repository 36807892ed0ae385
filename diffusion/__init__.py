"""mnist-diffusion-lab: score-based diffusion on MNIST (Song et al. 2021), pixel and latent space."""
from .autoencoder import AutoEncoder
from .hub import load_local, load_model, load_pipeline, load_pipelines, push_folder
from .hub_mixin import CorruptWeightsError, UnsafeWeightsError
from .layers import CrossAttention, GaussianFourierProjection, SpatialTransformer, TransformerBlock
from .losses import autoencoder_loss, dsm_loss
from .metrics import Classifier
from .pipeline import (DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, MODEL_DEFAULTS, Pipeline, PipelineStep,
                       SamplingDefaults, defaults_for)
from .samplers import SAMPLERS, Step, sample
from .score import ScoreModel
from .sde import VESDE
from .unet import UNet
from .version import WEIGHTS_VERSION, __version__

__all__ = ["WEIGHTS_VERSION", "__version__", "AutoEncoder", "Classifier", "CorruptWeightsError", "CrossAttention", "DEFAULT_GUIDANCE",
           "DEFAULT_SAMPLER", "DEFAULT_STEPS", "GaussianFourierProjection", "MODEL_DEFAULTS", "Pipeline", "PipelineStep",
           "SAMPLERS", "SamplingDefaults", "ScoreModel", "SpatialTransformer", "Step", "TransformerBlock", "UNet",
           "UnsafeWeightsError", "VESDE", "autoencoder_loss", "defaults_for", "dsm_loss", "load_local", "load_model",
           "load_pipeline", "load_pipelines", "push_folder", "sample"]
