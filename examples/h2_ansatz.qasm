OPENQASM 3.0;
include "stdgates.inc";
// A 2-qubit hardware-efficient ansatz for the tapered H2 Hamiltonian.
input float[64] a;
input float[64] b;
input float[64] c;
input float[64] d;
qubit[2] q;
ry(a) q[0];
ry(b) q[1];
cx q[0], q[1];
ry(c) q[0];
ry(d) q[1];
