# The harness's own HellaSwag preprocessing, imported (not copied) from lm_eval.
from lm_eval.tasks.hellaswag.utils import preprocess, process_docs  # noqa: F401
