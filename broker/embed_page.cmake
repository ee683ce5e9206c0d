# Turns page.html into a C array of bytes: const char broker_page_html[]; size_t broker_page_html_len.
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" hexlen)
math(EXPR nbytes "${hexlen} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "((0x[0-9a-f][0-9a-f],){32})" "\\1\n" body "${body}")
file(WRITE ${OUT} "/* Generated from broker/page.html; do not edit. */\n#include <stddef.h>\n"
     "const char broker_page_html[] = {\n${body}0x00};\n"
     "const size_t broker_page_html_len = ${nbytes};\n")
