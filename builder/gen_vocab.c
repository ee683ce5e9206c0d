/*
 * gen_vocab.c — the shipped sticker-phrase vocabulary (builder/vocab.txt, compiled in as
 * builder_vocab_txt by ps_embed), parsed once on first use.
 *
 * File format: UTF-8 text, one phrase a line, most common first. Leading lines that start
 * with '#' are comments; blank lines are skipped; a trailing '\r' is dropped. A phrase is
 * English when it is pure ASCII, Chinese otherwise. The table is built by one thread under
 * pthread_once and never changes afterwards, so the borrowed pointers stay valid for the
 * life of the process. The text is compiled in and checked by the unit tests, so a failed
 * allocation here is the only possible failure; it aborts like every out-of-memory in the
 * builder (STYLE §4).
 */
#include "gen.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const char builder_vocab_txt[];
extern const size_t builder_vocab_txt_len;

static struct {
    char *text; /* a writable copy of builder_vocab_txt, '\0' at every line end */
    const char **phrase;
    unsigned char *english;
    size_t n;
} vocab;

static pthread_once_t vocab_once = PTHREAD_ONCE_INIT;

static void vocab_oom(void)
{
    fputs("builder: out of memory while parsing the vocabulary\n", stderr);
    abort();
}

static void vocab_parse(void)
{
    size_t len = builder_vocab_txt_len, cap = 0, i = 0;
    int in_header = 1;

    vocab.text = malloc(len + 1);
    if (!vocab.text) vocab_oom();
    memcpy(vocab.text, builder_vocab_txt, len);
    vocab.text[len] = '\0';
    for (size_t k = 0; k < len; k++) cap += vocab.text[k] == '\n';
    cap += 1;
    vocab.phrase = malloc(cap * sizeof *vocab.phrase);
    vocab.english = malloc(cap);
    if (!vocab.phrase || !vocab.english) vocab_oom();

    while (i < len) {
        char *line = vocab.text + i;
        char *nl = memchr(line, '\n', len - i);
        size_t n = nl ? (size_t)(nl - line) : len - i;
        int ascii = 1;

        i += n + 1;
        line[n] = '\0';
        if (n > 0 && line[n - 1] == '\r') line[--n] = '\0';
        if (in_header && line[0] == '#') continue;
        in_header = 0;
        if (n == 0) continue;
        for (size_t k = 0; k < n; k++) ascii &= (unsigned char)line[k] < 0x80;
        vocab.phrase[vocab.n] = line;
        vocab.english[vocab.n] = (unsigned char)ascii;
        vocab.n++;
    }
}

static void vocab_init(void)
{
    pthread_once(&vocab_once, vocab_parse);
}

size_t builder_vocab_size(void)
{
    vocab_init();
    return vocab.n;
}

const char *builder_vocab_phrase(size_t rank)
{
    vocab_init();
    return rank < vocab.n ? vocab.phrase[rank] : NULL;
}

int builder_vocab_is_english(size_t rank)
{
    vocab_init();
    return rank < vocab.n && vocab.english[rank];
}
