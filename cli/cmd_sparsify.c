/* Stub: replaced by the implementation of `taper sparsify`. */
#include <stdio.h>
#include "cli.h"
int cmd_sparsify(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "taper sparsify: not built yet\n"); return CLI_FAIL; }
