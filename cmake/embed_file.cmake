# Turns a file into a C array of bytes (NUL-terminated): const char NAME[]; size_t NAME_len.
# usage: cmake -DIN=file -DOUT=file.c -DNAME=symbol -P embed_file.cmake
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" hexlen)
math(EXPR nbytes "${hexlen} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "((0x[0-9a-f][0-9a-f],){32})" "\\1\n" body "${body}")
get_filename_component(base ${IN} NAME)
file(WRITE ${OUT} "/* Generated from ${base}; do not edit. */\n#include <stddef.h>\n"
     "const char ${NAME}[] = {\n${body}0x00};\n"
     "const size_t ${NAME}_len = ${nbytes};\n")
