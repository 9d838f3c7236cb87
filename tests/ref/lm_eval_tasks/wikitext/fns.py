# The harness's own WikiText detokenizer and metrics, imported (not copied) from lm_eval.
from lm_eval.tasks.wikitext.preprocess_wikitext import (  # noqa: F401
    process_results,
    wikitext_detokenizer,
)
