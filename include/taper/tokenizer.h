/* The tokenizer: byte-level BPE (GPT-2 style: SmolLM2, Llama 3, Qwen2, DeepSeek, Falcon, ...),
 * BPE on UTF-8 characters with byte fallback (SentencePiece-converted tokenizer.json: Llama 2,
 * Phi-3, Gemma), and llama.cpp's score-based SentencePiece BPE (GGUF tokenizer model "llama"),
 * token-exact with HF `tokenizers` for tokenizer.json and with llama.cpp for GGUF; loaded from
 * tokenizer.json or GGUF metadata and, for the kinds those formats can carry, written back out.
 * docs/tokenizers.md lists what is supported. */
#ifndef TAPER_TOKENIZER_H
#define TAPER_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include "taper/status.h"
#include "taper/gguf.h"

typedef struct tp_tokenizer tp_tokenizer;

/* tokenizer.json (HF `tokenizers` format). If tokenizer_config.json sits beside it, its
 * add_bos_token / bos/eos token fields are honoured as transformers honours them: the
 * bos/eos/unk/pad tokens are taken from it; whether BOS/EOS are added is the post-processor's
 * (transformers 5 ignores add_bos_token for a tokenizer.json-backed tokenizer). Only the byte-level
 * BPE family loads; other models, normalizers, pre-tokenizers or decoders are TP_ERR_UNSUPPORTED. */
tp_status tp_tok_load_json(const char *path, tp_tokenizer **out);
/* tokenizer.ggml.* metadata: model "gpt2" (pre in {default/gpt2, smollm, llama-bpe, qwen2,
 * qwen35, deepseek-llm, deepseek-coder, falcon, command-r, ...}), "llama" (SentencePiece-style:
 * scores, token types, <0xNN> byte tokens, add_space_prefix) or "gemma4"; tokens, merges,
 * token_type, bos/eos/unk/pad ids, add_bos_token / add_eos_token. Other models (bert, t5, rwkv,
 * ...) are TP_ERR_UNSUPPORTED with a message naming the file and the model. */
tp_status tp_tok_load_gguf(const tp_gguf *g, tp_tokenizer **out);
void tp_tok_free(tp_tokenizer *t);
/* The tokenizer of PATH without its weights: a GGUF file (by its magic), an HF folder
 * (tokenizer.json, else the tokenizer.gguf taper writes for tokenizers tokenizer.json cannot
 * express; neither: *tok = NULL and TP_OK), or a tokenizer.json. chat_template (may be NULL)
 * receives the GGUF's or tokenizer_config.json's template, malloc'd, or NULL. */
tp_status tp_tok_load_any(const char *path, tp_tokenizer **tok, char **chat_template);

int tp_tok_vocab_size(const tp_tokenizer *t);
int32_t tp_tok_bos(const tp_tokenizer *t);      /* -1 if none */
int32_t tp_tok_eos(const tp_tokenizer *t);      /* -1 if none */
int32_t tp_tok_unk(const tp_tokenizer *t);      /* -1 if none (from the metadata) */
int32_t tp_tok_pad(const tp_tokenizer *t);      /* -1 if none */
int tp_tok_adds_bos(const tp_tokenizer *t);     /* 1 if encode(add_special=1) prepends BOS */
const char *tp_tok_pre_name(const tp_tokenizer *t); /* e.g. "smollm" */
/* The vocabulary string of id as the file stores it (byte-level encoded, or with U+2581 for
 * spaces and <0xNN> byte tokens), NULL if out of range. */
const char *tp_tok_piece(const tp_tokenizer *t, int32_t id);
int tp_tok_is_special(const tp_tokenizer *t, int32_t id);
int32_t tp_tok_find(const tp_tokenizer *t, const char *piece); /* -1 if absent */

/* Encode UTF-8 text (len bytes; bytes that are not UTF-8 are read as U+FFFD, as Python's
 * bytes.decode(errors="replace") would hand them to HF). Added/special tokens
 * in the text are matched first, as HF does by default. add_special: prepend BOS etc. as the
 * tokenizer's post-processor / add_bos says. *ids is malloc'd. */
tp_status tp_tok_encode(const tp_tokenizer *t, const char *text, size_t len, int add_special,
                        int32_t **ids, size_t *n_ids);
/* Flags of tp_tok_encode_ex. ADD_SPECIAL: as add_special above. NO_PARSE_SPECIAL: special
 * (control) tokens written in the text are not matched, so their text is tokenized like any
 * other; non-special added tokens still are (llama.cpp's parse_special = false). */
enum { TP_TOK_ADD_SPECIAL = 1, TP_TOK_NO_PARSE_SPECIAL = 2 };
tp_status tp_tok_encode_ex(const tp_tokenizer *t, const char *text, size_t len, unsigned flags,
                           int32_t **ids, size_t *n_ids);
/* "byte-level BPE", "BPE (byte fallback)" / "BPE" (on UTF-8 characters) or "SPM (scores)". */
const char *tp_tok_kind(const tp_tokenizer *t);

/* Decode ids to UTF-8 (malloc'd, NUL-terminated), skipping special tokens if asked. Bytes that
 * do not form UTF-8 become U+FFFD as in HF. An id outside the vocabulary is TP_ERR_ARG (HF
 * silently drops it). Safe to call from several threads on one tokenizer, as is encode. */
tp_status tp_tok_decode(const tp_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                        char **out, size_t *out_len);

/* HF folder files: tokenizer.json, tokenizer_config.json, special_tokens_map.json in dir,
 * such that HF tokenizers/transformers load them and tokenize exactly as this tokenizer.
 * TP_ERR_UNSUPPORTED for the score-based SPM model (GGUF "llama"), which tokenizer.json's BPE
 * cannot express exactly. */
tp_status tp_tok_save_hf(const tp_tokenizer *t, const char *dir);
/* tokenizer.ggml.* keys into a GGUF being written. Byte-level BPE with a llama.cpp pre-tokenizer
 * name, and the GGUF "llama" / "gemma4" kinds it was loaded from; anything else (e.g. a
 * tokenizer.json BPE with byte fallback and normalizers) is TP_ERR_UNSUPPORTED. */
tp_status tp_tok_to_gguf(const tp_tokenizer *t, tp_gguf_writer *w);

#endif
