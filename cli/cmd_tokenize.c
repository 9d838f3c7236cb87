/* Stub: replaced by the implementation of `taper tokenize`. */
#include <stdio.h>
#include "cli.h"
int cmd_tokenize(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "taper tokenize: not built yet\n"); return CLI_FAIL; }
