# Turns vocab.txt into a C array of bytes: const char builder_vocab_txt[]; size_t builder_vocab_txt_len.
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" hexlen)
math(EXPR nbytes "${hexlen} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "((0x[0-9a-f][0-9a-f],){32})" "\\1\n" body "${body}")
file(WRITE ${OUT} "/* Generated from builder/vocab.txt; do not edit. */\n#include <stddef.h>\n"
     "const char builder_vocab_txt[] = {\n${body}0x00};\n"
     "const size_t builder_vocab_txt_len = ${nbytes};\n")
