# The harness's own WinoGrande functions, imported (not copied) from lm_eval.
from lm_eval.tasks.winogrande.preprocess_winogrande import (  # noqa: F401
    doc_to_choice,
    doc_to_target,
    doc_to_text,
)
