/* taper command-line entry point: dispatches to cmd_*.c. */
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    (void)argc; (void)argv;
    puts("taper: under construction");
    return 0;
}
