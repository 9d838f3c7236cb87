#!/bin/sh
# Prints the compile+link flags for OpenBLAS (OpenMP build preferred, so that BLAS calls made
# inside taper's OpenMP regions do not oversubscribe the cores), or nothing if none works.
CC="${CC:-cc}"
t=$(mktemp -d)
cat > "$t/b.c" <<'C'
#include <cblas.h>
int main(void){float a=1,b=1,c=0;cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasNoTrans,1,1,1,1,&a,1,&b,1,0,&c,1);return c!=1;}
C
for v in openblas-openmp openblas-pthread; do
  inc=/usr/include/x86_64-linux-gnu/$v lib=/usr/lib/x86_64-linux-gnu/$v
  flags="-I$inc -L$lib -Wl,-rpath,$lib -lopenblas"
  if [ -d "$lib" ] && $CC "$t/b.c" $flags -fopenmp -o "$t/b" 2>/dev/null && "$t/b"; then
    echo "$v|$flags"; rm -rf "$t"; exit 0
  fi
done
rm -rf "$t"
