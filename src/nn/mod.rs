//! Neural-network building blocks: losses, optimiser + schedule, checkpoint I/O.
pub mod checkpoint;
pub mod loss;
pub mod optim;
