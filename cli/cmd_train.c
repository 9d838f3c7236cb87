/* Stub: replaced by the implementation of `taper train`. */
#include <stdio.h>
#include "cli.h"
int cmd_train(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "taper train: not built yet\n"); return CLI_FAIL; }
