# embed.cmake: writes a C file defining a byte array with the contents of a binary file.
# Usage: cmake -DIN=file.bin -DOUT=file.c -DNAME=symbol -P embed.cmake
# Defines `const unsigned char NAME[]` and `const unsigned long NAME_len`. Used for the
# protobuf descriptor set that gRPC server reflection serves (rpc/reflection.c).
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" n)
math(EXPR bytes "${n} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "((0x..,){16})" "\\1\n" body "${body}")
file(WRITE "${OUT}" "/* generated from ${IN} by cmake/embed.cmake: do not edit */\n"
     "const unsigned char ${NAME}[] = {\n${body}\n};\n"
     "const unsigned long ${NAME}_len = ${bytes};\n")
