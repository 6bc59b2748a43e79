"""Pure torch models: encoders, context networks, the CPC loss, probes; safetensors save/load."""
from jtm.models.config import CPCConfig
from jtm.models.context import build_context
from jtm.models.cpc import CPCEncoder, CPCLoss, CPCOutput, sample_negatives
from jtm.models.encoders import DOWNSAMPLING, ConvEncoder, SincEncoder, build_encoder
from jtm.models.probes import LinearProbe, MLPProbe, build_probe

__all__ = [
    "CPCConfig", "CPCEncoder", "CPCLoss", "CPCOutput", "sample_negatives", "DOWNSAMPLING", "ConvEncoder",
    "SincEncoder", "build_encoder", "build_context", "LinearProbe", "MLPProbe", "build_probe",
]
