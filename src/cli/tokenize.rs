//! `gpt2q tokenize`: show how the model's tokenizer splits a text.

use gpt2q::model::Model;
use gpt2q::Result;

use super::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to tokenize.
    text: String,
    /// Print only the ids.
    #[arg(long)]
    ids: bool,
}

pub fn run(args: Args) -> Result<()> {
    let file = args.model.open()?;
    let model = Model::load(&file, args.model.verify)?;
    let ids = model.tokenizer.encode(&args.text);
    let line: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    outln!("{}", line.join(" "));
    if !args.ids {
        for &id in &ids {
            let bytes = model.tokenizer.token_bytes(id).unwrap_or(&[]);
            outln!("{id:>6} {:?}", String::from_utf8_lossy(bytes));
        }
    }
    Ok(())
}
