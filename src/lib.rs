//! engine: a GPU compute engine in Rust and WGSL for the dense-prediction
//! network of "Dense Prediction of Mammography".
pub mod data;
