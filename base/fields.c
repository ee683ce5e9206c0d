/*
 * fields.c — names and reference weights of the five sticker fields.
 */
#include "ps/fields.h"

#include <string.h>

const char *const ps_field_names[PS_NFIELDS] = {"ocr", "queries", "keywords", "desc", "emotion"};
const float ps_field_default_weights[PS_NFIELDS] = {1.0f, 0.5f, 0.1f, 0.1f, 0.1f};

static const char *const reference_names[PS_NFIELDS] = {
    "paddleocr", "raw_queries", "llava_keywords", "llava34b_image_desc", "llava34b_image_emotions"};

int ps_field_lookup(const char *name)
{
    for (int f = 0; f < PS_NFIELDS; f++)
        if (strcmp(name, ps_field_names[f]) == 0 || strcmp(name, reference_names[f]) == 0) return f;
    return -1;
}
