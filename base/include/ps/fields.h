/*
 * fields.h — the five text fields of a sticker and the reference BM25F weights
 * (DESIGN §1). The order here is the order of every per-field array in the engine.
 */
#ifndef PS_FIELDS_H
#define PS_FIELDS_H

enum { PS_F_OCR = 0, PS_F_QUERIES, PS_F_KEYWORDS, PS_F_DESC, PS_F_EMOTION, PS_NFIELDS };

/* "ocr", "queries", "keywords", "desc", "emotion" */
extern const char *const ps_field_names[PS_NFIELDS];
/* Reference weights: ocr 1.0, queries 0.5, keywords 0.1, desc 0.1, emotion 0.1. */
extern const float ps_field_default_weights[PS_NFIELDS];

/* Field index for a name, accepting the authors' names too (paddleocr, raw_queries,
 * llava_keywords, llava34b_image_desc, llava34b_image_emotions); -1 if unknown. */
int ps_field_lookup(const char *name);

#endif
