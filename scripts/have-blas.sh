#!/bin/sh
# Prints 1 if OpenBLAS's cblas compiles and links with $CC, else 0.
CC="${CC:-cc}"
t=$(mktemp -d)
cat > "$t/b.c" <<'C'
#include <cblas.h>
int main(void){float a=1,b=1,c=0;cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasNoTrans,1,1,1,1,&a,1,&b,1,0,&c,1);return c!=1;}
C
if $CC "$t/b.c" -I/usr/include/x86_64-linux-gnu/openblas-pthread -lopenblas -o "$t/b" 2>/dev/null; then echo 1; else echo 0; fi
rm -rf "$t"
